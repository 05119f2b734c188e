"""The trainer: one config trained on one task (tuner's loop or the task's own), optimizers and schedules."""
