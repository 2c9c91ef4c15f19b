"""Errors the CLI turns into a clear one-line message and an exit code (never a traceback)."""


class UserError(Exception):
    """Bad input or a refused action: the message says what and where; exit status 1."""

    exit_code = 1


class UsageError(UserError):
    """The command line itself is wrong (unknown option value, missing file argument): exit 2."""

    exit_code = 2
