"""A count and its noun for people: ``1 trial``, ``3 trials``, ``0 studies``."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``plural``, by default ``noun`` + ``s``) unless ``n`` is 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
