"""User-facing errors.

A `UserError` is a mistake the user can fix (bad preset, bad file, bad flag). The CLI prints its
message as one line and exits non-zero, without a traceback; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""
