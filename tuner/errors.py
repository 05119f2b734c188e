"""The one exception that the CLI turns into a one-line message and exit code 2, and one-line reasons for any other."""


class UserError(Exception):
    """Bad input: the message names the file or flag, the field, the value and what is allowed."""


def reason(err: BaseException) -> str:
    """``Type: message`` in one line (the message's first line), for any exception."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
