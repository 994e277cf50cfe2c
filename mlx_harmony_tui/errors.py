"""Errors a user can act on. Faces print their message without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, invalid config); the message says what and where."""
