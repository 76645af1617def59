"""`--workers N` on one machine: N worker processes of the same sweep, signals passed on to each."""

from __future__ import annotations

import os
import signal
import subprocess


def run_local_workers(argv: list[str], count: int) -> int:
    """Run `count` copies of the worker command line `argv` and wait for them; returns an exit code.

    Each child has a session of its own, so a Ctrl-C in the terminal reaches it exactly once,
    forwarded from here (twice would cut short the clean-up of its first). SIGTERM is forwarded too.
    The forwarding handlers are set before the children start: a child inherits SIG_IGN where this
    process ignores a signal (a script's `cmd &` starts it with SIGINT ignored), and would then
    carry on through the forwarded Ctrl-C; a handled signal starts out default in the child.
    The CPU cores are shared out ($OMP_NUM_THREADS, unless set): torch would give each child all of
    them, and N processes spinning on the same cores train many times slower than one.
    """
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    children: list[subprocess.Popen] = []
    received: list[int] = []
    reached = 0  # how many of `children` the last forwarded signal went to

    def forward(signum, frame) -> None:
        nonlocal reached
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        reached = len(children)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while len(children) < count and not received:  # none started after a Ctrl-C
            children.append(subprocess.Popen(argv, start_new_session=True, env=environment))
        for child in children[reached:] if received else ():  # started while the signal came
            child.send_signal(received[-1])
        codes = [child.wait() for child in children]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        return 128 + received[0]  # 130 for Ctrl-C, 143 for SIGTERM, as a single worker would
    failed = [128 - code if code < 0 else code for code in codes if code != 0]  # -9 (SIGKILL) -> 137
    return failed[0] if failed else 0
