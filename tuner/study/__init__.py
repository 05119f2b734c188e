"""The Optuna glue: the study runner, resume, sampler and pruner, search spaces, outcomes, budget and storage."""
