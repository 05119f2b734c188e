"""Experiments and best configs: the YAML files, their validation and their dataclasses."""
