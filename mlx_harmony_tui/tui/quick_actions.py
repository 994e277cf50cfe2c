"""The command palette's entries and the quick settings people switch most (reasoning effort, temperature,
tools on/off), and exporting the session: each is a palette command, most also a key."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import SystemCommand
from textual.screen import Screen

from mlx_harmony_tui.backends.base import leaves_defaults_to_server
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import check, parse_value
from mlx_harmony_tui.tui.keymap import ACTION_HELP, CHAT_BINDINGS
from mlx_harmony_tui.tui.screens.dialogs import PromptScreen

if TYPE_CHECKING:
    from mlx_harmony_tui.tui.app import HarmonyApp

    _Base = HarmonyApp
else:
    _Base = object

EFFORTS = ("low", "medium", "high")


class QuickActions(_Base):
    """Part of HarmonyApp (a mixin: its methods need the app's settings, controller and screens)."""

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every bound action is also in the command palette (ctrl+p), by its title with what it does and
        its key; plus what has no key: each reasoning effort, exporting the session."""
        yield from super().get_system_commands(screen)  # type: ignore[misc]
        for b in CHAT_BINDINGS:
            name = b.action.removeprefix("app.")
            if name in ("quit", "command_palette"):
                continue
            key = self._keymap.get(b.id or "", b.key)
            about = f"{ACTION_HELP.get(b.id or '', b.description)} · {key}"
            if name == "toggle_tools":
                yield SystemCommand(b.description, about, self.screen_chat.action_toggle_tools)
                continue
            yield SystemCommand(b.description, about, getattr(self, f"action_{name}"))
        for effort in EFFORTS:
            yield SystemCommand(f"Reasoning effort: {effort}", f"think {effort} from the next turn",
                                lambda e=effort: self.set_effort(e))  # type: ignore[misc]
        if leaves_defaults_to_server(self.backend):
            yield SystemCommand("Reasoning effort: server default", "leave it to the server from the next turn",
                                lambda: self.set_effort(None))
        if self.chat.attachments:
            yield SystemCommand("Remove attached files", "the next message goes without "
                                + ", ".join(a.name for a in self.chat.attachments), self.action_detach)
        yield SystemCommand("Export session as Markdown", "write it to a .md file in the current folder",
                            lambda: self.export_session("md"))
        yield SystemCommand("Export session as JSON", "OpenAI-style messages, to a .json file in the current folder",
                            lambda: self.export_session("json"))

    # ---- quick settings -------------------------------------------------------------------------------
    def _apply_settings(self, settings: ChatSettings, note: str) -> None:
        self.chat.set_settings(settings)
        self._update_header()
        self.notify(note)

    def set_effort(self, effort: str | None) -> None:
        """None: a remote server's default again (not sent)."""
        new = copy.deepcopy(self.settings)
        if effort is None:
            new.unset("reasoning_effort")
        else:
            new.set_value("reasoning_effort", effort)
        self._apply_settings(new, f"Reasoning effort {effort or 'left to the server'} from the next turn")

    def action_cycle_effort(self) -> None:
        """low -> medium -> high -> low. With a remote server its default (unknown here) is a step too,
        server default -> low -> medium -> high -> server default: the value held while unset is only a
        placeholder, so stepping on from it would skip low for no reason the user can see."""
        server = leaves_defaults_to_server(self.backend)
        cycle: list[str | None] = [*EFFORTS, None] if server else [*EFFORTS]
        unset = server and "reasoning_effort" not in self.settings.explicit
        current = None if unset else self.settings.reasoning_effort
        self.set_effort(cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else "medium")

    def action_set_temperature(self) -> None:
        def done(value: str | None) -> None:
            if value is None or not value.strip():
                return
            try:  # the range of --temperature and /set (faces/common.py), as in the parameters panel
                t = parse_value("temperature", value, "Temperature")
                check("temperature", t, "Temperature")
            except UserError as e:
                self.notify(str(e), severity="error")
                return
            new = copy.deepcopy(self.settings)
            new.set_value("temperature", t)
            self._apply_settings(new, f"Temperature {t:g} from the next turn")

        unset = leaves_defaults_to_server(self.backend) and "temperature" not in self.settings.explicit
        current = "" if unset else f"{self.settings.sampling.temperature:g}"
        title = "Temperature (0 = greedy, up to 10)" + ("; now the server's default" if unset else "")
        self.push_screen(PromptScreen(title, current), done)

    def action_toggle_builtin_tools(self) -> None:
        tools = list(self.settings.builtin_tools)
        if tools:
            self._tools_off = tools
            self._apply_settings(replace(self.settings, builtin_tools=[]), "Tools off from the next turn")
        else:
            back = getattr(self, "_tools_off", None) or ["python"]
            self._apply_settings(replace(self.settings, builtin_tools=back),
                                 f"Tools on ({', '.join(back)}) from the next turn")

    def export_session(self, fmt: str) -> Path | None:
        """Write the open session to the current folder (Markdown or OpenAI-style JSON); its path, shown."""
        from mlx_harmony_tui.sessions.export import to_json, to_markdown

        session = self.chat.session
        if session is None:
            self.notify("Nothing to export yet: send a message first")
            return None
        path = Path.cwd() / f"{session.id}.{fmt}"
        try:
            path.write_text(to_markdown(session) if fmt == "md" else to_json(session), encoding="utf-8")
        except OSError as e:
            self.notify(f"could not write {path}: {e.strerror}", severity="error")
            return None
        self.notify(f"Exported to {path}")
        return path
