"""What the user is told: the one exception that the CLI turns into a one-line message and exit code 2,
one-line reasons for any other, and URLs without their secrets (and the file an SQLite URL names)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class UserError(Exception):
    """Bad input: the message names the file or flag, the field, the value and what is allowed."""


def reason(err: BaseException) -> str:
    """``Type: message`` in one line (the message's first line), for any exception."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form of a URL that is printed or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def url_failure(err: BaseException, url: str) -> str:
    """:func:`reason` of a failure to open ``url``, without its password (drivers quote the URL they got)."""
    password = urlsplit(url).password
    return reason(err).replace(password, "***") if password else reason(err)


def sqlite_file(url: str) -> str:
    """The database file an ``sqlite://`` URL names, as SQLAlchemy reads it; ``""`` for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database or ""
    return "" if database == ":memory:" else database
