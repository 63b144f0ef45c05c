"""How a stage stops on bad input: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class StageError(Exception):
    """Bad params or input files; the message is the one line a user sees."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning a StageError into a one-line message and exit code 2."""
    try:
        main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
