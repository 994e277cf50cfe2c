"""Branches and selected messages: regenerate or edit any message (what it replaces stays as a branch, in
the controller's session), flip between versions, and the keys of a selected message (c, e, r, [ ])."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlx_harmony_tui.tui.session_view import show_session
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, ChatMessage, UserMessage
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

if TYPE_CHECKING:
    from mlx_harmony_tui.tui.app import HarmonyApp

    _Base = HarmonyApp
else:
    _Base = object


class BranchActions(_Base):
    """Part of HarmonyApp (a mixin: its methods need the app's conversation, controller and turn)."""

    async def redraw(self) -> None:
        """Show the conversation as the session has it now (after a branch changed)."""
        session = self.chat.session
        if session is None:
            return
        self.view.unfollow()
        await show_session(self.conversation, self.screen_chat.query_one(ToolLog), session)

    def _last_position(self, role: str) -> int | None:
        """Where the last user message (role "user") or the last reply ("assistant") starts in the record."""
        session = self.chat.session
        if session is None:
            return None
        users = [k for k, m in enumerate(session.messages) if m.role == "user"]
        if not users:
            return None
        return users[-1] if role == "user" else users[-1] + 1

    async def _drop_without_session(self, keep_user: bool) -> str | None:
        """No session record (it could not be written): take back the last exchange from the history and
        the screen, as before branches existed."""
        text = self.chat.drop_last_exchange(keep_user)
        if text is not None:
            self.view.unfollow()
            widgets = list(self.conversation.children)
            last = max((k for k, w in enumerate(widgets) if isinstance(w, UserMessage)), default=None)
            for w in widgets[last + (1 if keep_user else 0):] if last is not None else []:
                await w.remove()
        return text

    async def regenerate_at(self, position: int | None) -> None:
        """A new version of the reply at ``position``; the old one stays as a branch."""
        if self.generating or self.backend is None:
            return
        if position is None or self.chat.session is None:
            if await self._drop_without_session(keep_user=True) is None:
                self.notify("Nothing to regenerate")
                return
        else:
            self.chat.fork_at(position)
            await self.redraw()
        await self.start_turn()

    async def edit_at(self, position: int | None) -> None:
        """Put the user message at ``position`` into the box; what followed it stays as a branch."""
        if self.generating:
            return
        if self.chat.session is None:
            text = await self._drop_without_session(keep_user=False)
        else:
            text = self.chat.fork_at(position) if position is not None else None
        if text is None:
            self.notify("No message to edit")
            return
        await self.redraw()
        box = self.screen_chat.query_one(ChatInput)
        box.text = text
        box.move_cursor(box.document.end)  # typing continues the text, as in any editor
        box.focus()

    async def action_regenerate(self) -> None:
        await self.regenerate_at(self._last_position("assistant"))

    async def action_edit_last(self) -> None:
        await self.edit_at(self._last_position("user"))

    async def action_next_branch(self) -> None:
        if self.generating:
            return
        if not self.chat.flip():
            self.notify("No other versions: edit a message or regenerate a reply to make one")
            return
        await self.redraw()

    def action_select_message(self) -> None:
        msgs = list(self.conversation.query(ChatMessage))
        if msgs:
            msgs[-1].focus()
            msgs[-1].scroll_visible(animate=False)

    async def on_chat_message_act(self, event: ChatMessage.Act) -> None:
        """A selected message's key: c copies it, e edits (yours), r regenerates (a reply), [ ] flip."""
        msg, action = event.message, event.action
        if action == "copy":
            text = msg.copy_text()
            if text:
                self.copy_to_clipboard(text)
                self.notify("Message copied to the clipboard")
        elif action == "edit" and isinstance(msg, UserMessage):
            await self.edit_at(msg.position)
        elif action == "regenerate" and isinstance(msg, AssistantMessage):
            await self.regenerate_at(msg.position)
        elif action in ("prev", "next") and msg.position is not None and not self.generating:
            if self.chat.flip(msg.position, -1 if action == "prev" else 1):
                await self.redraw()
                for w in self.conversation.query(ChatMessage):
                    if w.position == msg.position:
                        w.focus()
            else:
                self.notify("This message has no other versions")
