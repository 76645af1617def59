"""Signals as exceptions: SIGTERM raises `Terminated`, and a block can defer SIGINT/SIGTERM.

Primitives only. Which steps of a trial's life must not be cut by a signal is decided in one
place, `sweeps.execution.lease.TrialLease`; `cli.py train` uses `handle_sigterm` so its run ends KILLED.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so `except Exception` cannot swallow it."""


@contextlib.contextmanager
def handle_sigterm():
    """In the block SIGTERM raises Terminated (once), so open runs end KILLED; restores the old handler."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    fired = False

    def on_sigterm(signum, frame):
        nonlocal fired
        if not fired:  # a second SIGTERM while runs are being closed is ignored
            fired = True
            raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM that arrive in the block are recorded, then raised again when it ends."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    pending: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: pending.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)
