"""The one exception that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input: the message names the file or flag, the field, the value and what is allowed."""
