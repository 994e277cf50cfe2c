"""The chat controller: one UI-free conversation that every face drives (see conversation.py)."""

from mlx_harmony_tui.controller.conversation import ChatController, Notify

__all__ = ["ChatController", "Notify"]
