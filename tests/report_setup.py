"""The stored setup of a hand-made study or Report, shared by the report's and evidence's tests (a test that needs
another task overrides it: ``SETUP | {"task": ...}``)."""

SETUP = {
    "task": "digits-mlp",
    "task_args": {},
    "epochs": 3,
    "batch_size": 64,
    "seed": 0,
    "objective": "loss",
    "direction": "minimize",
    "metric": "accuracy",
}
# A Config's training fields (and a stored config's training section): SETUP less what only a study has.
TRAINING = {key: value for key, value in SETUP.items() if key not in ("direction", "metric")}
