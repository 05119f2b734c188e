"""An experiment from preparation to its studies, final evaluation, export and report; the worker processes."""
