"""How a stage runs: thread limits from the environment, and on bad input one line on
stderr, a non-zero exit and no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

THREADS_VARIABLE = "STAGE_THREADS"


class StageError(Exception):
    """Bad params or input files; the message is the one line a user sees."""


def thread_limit() -> int | None:
    """Threads a stage may use, from STAGE_THREADS (unset: all cores)."""
    value = os.environ.get(THREADS_VARIABLE)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise StageError(f"{THREADS_VARIABLE} = {value!r}: must be a positive integer")
    return int(value)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main() within the thread limit, turning a StageError into a one-line
    message and exit code 2."""
    try:
        threads = thread_limit()
        if threads is None:
            main()
            return
        # Parallel experiments (dvc queue start -j N) would otherwise each start one
        # BLAS/OpenMP thread per core and fight over them.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
