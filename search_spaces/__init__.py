"""The shipped search spaces (data only; installed as tuner.search_spaces)."""
