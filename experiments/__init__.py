"""The shipped experiments (data only; installed as tuner.experiments)."""
