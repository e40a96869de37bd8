"""Exceptions that signal handlers raised inside a long native call, raised again in Python.

The native AR greedy search asks Python to run its pending signal handlers between steps
(``csrc/cpu/interrupt.cpp``). An exception a handler raises there (KeyboardInterrupt for Ctrl-C,
the CLI's SystemExit for SIGTERM, a deadline's own exception) cannot cross the native call, so the
call hands it to ``stash`` and stops early; its Python caller calls ``raise_pending`` as soon as
the call returns, which raises it: the partial outputs of the stopped call are never used.
"""

from __future__ import annotations

import threading

_pending: dict[int, BaseException] = {}  # by thread: the thread whose native call was stopped


def stash(error: BaseException) -> None:
    """Keep ``error`` for ``raise_pending`` in this thread (called by the native code)."""
    _pending[threading.get_ident()] = error


def raise_pending() -> None:
    """Raise the exception a signal handler raised during this thread's last native call, if any."""
    error = _pending.pop(threading.get_ident(), None)
    if error is not None:
        raise error
