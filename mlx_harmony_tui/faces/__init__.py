"""Non-TUI faces: line chat and one-shot generate."""
