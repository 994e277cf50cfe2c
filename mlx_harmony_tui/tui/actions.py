"""The chat screen's actions that open a dialog or act on what is shown (analysis, clipboard, help,
parameters, models, sessions). The command palette's list is tui/quick_actions.py. A mixin of HarmonyApp
(tui/app.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.widgets import Collapsible

from mlx_harmony_tui.backends.base import leaves_defaults_to_server
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.tui.keymap import CHAT_BINDINGS
from mlx_harmony_tui.tui.screens.help import HelpScreen
from mlx_harmony_tui.tui.screens.models import ModelPickerScreen
from mlx_harmony_tui.tui.screens.params import ParamsScreen
from mlx_harmony_tui.tui.screens.sessions import SessionBrowserScreen
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage

if TYPE_CHECKING:
    from mlx_harmony_tui.tui.app import HarmonyApp

    _Base = HarmonyApp
else:
    _Base = object


class ScreenActions(_Base):
    def action_toggle_analysis(self) -> None:
        boxes = [b for b in self.conversation.query(Collapsible) if b.has_class("analysis")]
        if not boxes:
            return
        collapse = not all(b.collapsed for b in boxes)
        for b in boxes:
            b.collapsed = collapse
        for m in self.conversation.query(AssistantMessage):
            m.user_toggled = True

    def action_copy_reply(self) -> None:
        msgs = [m for m in self.conversation.query(AssistantMessage) if m.final_text]
        if not msgs:
            self.notify("No reply to copy")
            return
        self.copy_to_clipboard(msgs[-1].final_text)
        self.notify("Reply copied to the clipboard")

    def action_copy_code(self) -> None:
        for m in reversed(list(self.conversation.query(AssistantMessage))):
            blocks = m.code_blocks()
            if blocks:
                self.copy_to_clipboard(blocks[-1])
                self.notify("Code block copied to the clipboard")
                return
        self.notify("No code block to copy")

    def action_attach(self) -> None:
        """Ask for a text file's path; its contents go with the next message (chat/attachments.py)."""
        from mlx_harmony_tui.errors import UserError
        from mlx_harmony_tui.tui.screens.dialogs import PromptScreen

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                a = self.chat.attach(path)
            except UserError as e:
                self.notify(str(e), severity="error")
                return
            self.show_attachments()
            self.notify(f"Attached {a.describe()}: it goes with your next message")

        self.push_screen(PromptScreen("Attach a text file (path):"), done)

    def show_attachments(self) -> None:
        """The files waiting for the next message, on the message box's border (a toast alone was gone
        before the message was sent, and the files then went with it unannounced)."""
        from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

        names = ", ".join(a.name for a in self.chat.attachments)
        box = self.screen_chat.query_one(ChatInput)
        box.border_title = f"attached: {names}" if names else None
        box.border_subtitle = "ctrl+p: remove attached files" if names else None

    def action_detach(self) -> None:
        if not self.chat.attachments:
            self.notify("No files attached")
            return
        self.chat.attachments = []
        self.show_attachments()
        self.notify("Attached files removed: your next message goes without them")

    def action_help(self) -> None:
        rows = [(self._keymap.get(b.id or "", b.key), b.description, b.id or "") for b in CHAT_BINDINGS]
        self.push_screen(HelpScreen(rows))

    def action_params(self) -> None:
        def done(new: ChatSettings | None) -> None:
            if new is not None:
                self.chat.set_settings(new)
                self._update_header()
                self.notify("Parameters apply from the next turn")

        self.push_screen(ParamsScreen(self.settings, leaves_defaults_to_server(self.backend)), done)

    def action_models(self) -> None:
        from mlx_harmony_tui.catalog.listing import find_models

        if self.loading:
            self.notify("A model is already loading")
            return
        if self.remote:  # the loader connects to the server whatever is picked: a local list would mislead
            if self.backend is not None:
                self.notify(f"The server at {self.remote} chooses the model ({self.backend.model_name}); "
                            "start without --remote to run a local one")
            else:
                self.notify(f"Connecting to {self.remote} again")
                self.start_loading(self.remote)
            return

        def done(choice: str | None) -> None:
            if choice:
                self.start_loading(choice)

        found = find_models(self.models_dirs, context=self.settings.context_limit)
        self.push_screen(ModelPickerScreen(found, self.model_ref, self.models_dirs), done)

    def action_sessions(self) -> None:
        async def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            what, sid = result
            if what == "new":
                await self.action_new_session()
            elif sid != self.session_id:
                await self.open_session(sid)

        self.push_screen(SessionBrowserScreen(self.chat.store, self.session_id), done)
