"""Cooperative interruption of long computations (a deadline passed, the client left, the server
is stopping): whoever starts the work sets a check for its thread with `checking`, and the work
calls `checkpoint()` between query chunks, kernel launches and layers. The check raises (e.g.
TimeoutError) to abandon the work; without a check, `checkpoint()` does nothing.

A thread-local, not a contextvar: the service steps its generators on worker threads, and the
check must hold for exactly the thread that computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def checking(check: Callable[[], None]) -> Iterator[None]:
    """Run the block with `check` called at every checkpoint of this thread (nested checks stack)."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def checkpoint() -> None:
    """Give the current check (if any) the chance to abandon the work by raising."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()


def current_check() -> Callable[[], None] | None:
    """The check of this thread, to hand to threads that compute a part of its work."""
    return getattr(_local, "check", None)
