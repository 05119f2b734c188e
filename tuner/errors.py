"""What the user is told: the one exception that the CLI turns into a one-line message and exit code 2, and URLs without their secrets."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class UserError(Exception):
    """Bad input: the message names the file or flag, the field, the value and what is allowed."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form of a URL that is printed or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
