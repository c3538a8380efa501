"""The one exception type that reaches a user as a one-line message."""


class UserError(Exception):
    """Bad input or an unusable environment: the CLI prints ``str(err)`` and exits non-zero.

    Raise it with a message that says what was wrong and, where it helps, what was expected.
    """
