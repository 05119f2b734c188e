"""``python -m tuner``: parse the arguments, run the command, turn its outcome into an exit code.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback),
130 interrupted (finished trials are kept), 1 anything unexpected.
"""

from __future__ import annotations

import os
import sys

from tuner.cli.arguments import build_parser
from tuner.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Run the ``tuner`` command ``argv`` (default: ``sys.argv[1:]``) and return its exit code: 0, 2 after bad input
    (one line on stderr), 130 after Ctrl-C (finished trials are kept).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"tuner: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuner: interrupted; finished trials are kept: run the same command to resume", file=sys.stderr)
        return 130


def command() -> int:
    """The installed ``tuner`` command: :func:`main`, with the current folder first on the import path as ``python -m
    tuner`` has it, so that a task's ``package.module:factory`` path given from the folder holding the package (the
    README's ``examples.image_cnn:...`` from the repository's root) imports the same with either."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return main()
