"""sweeps/execution/supervisor.py: `--workers N` on one machine, with tiny `python -c` children for workers.

Each child writes a handshake file once it is running (its pid, session and $OMP_NUM_THREADS), so the
test signals the supervisor only once every child is up and the forwarding handlers are in place (they
are set before the first child starts). run_local_workers runs in the test's own process: its handlers
must be put back afterwards. The Ctrl-C case of a sweep started with SIGINT ignored is in test_workers.
"""

import json
import os
import signal
import sys
import threading
import time

import pytest

from sweeps.execution.supervisor import run_local_workers

pytestmark = pytest.mark.e2e

HANDSHAKE_TIMEOUT = 60  # seconds for the children to start (Python start-up on a busy machine), not a timing

# argv[1]: the handshake folder; argv[2]: what to do once up: exit:<code>, kill:<signal>, first-fails:<code>
# (the first child to claim a file exits <code>, the others 0), or wait (until SIGINT or SIGTERM, whose name
# is written to <pid>.<SIGNAME>; then exit 0, so that the supervisor's exit code is its own).
CHILD = """
import json, os, signal, sys, time
from pathlib import Path
out, action = Path(sys.argv[1]), sys.argv[2]
def stopped(signum, frame):
    (out / f"{os.getpid()}.{signal.Signals(signum).name}").touch()
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
signal.signal(signal.SIGINT, stopped)
(out / f"{os.getpid()}.ready").write_text(json.dumps(
    {"pid": os.getpid(), "sid": os.getsid(0), "threads": os.environ.get("OMP_NUM_THREADS")}))
kind, _, value = action.partition(":")
if kind == "exit":
    sys.exit(int(value))
if kind == "kill":
    os.kill(os.getpid(), int(value))
if kind == "first-fails":
    try:
        os.close(os.open(out / "claimed", os.O_CREAT | os.O_EXCL))
        sys.exit(int(value))
    except FileExistsError:
        sys.exit(0)
time.sleep(30)  # only a failed test gets here: the children end on their own
sys.exit(99)
"""


def workers(tmp_path, action: str) -> list[str]:
    return [sys.executable, "-c", CHILD, str(tmp_path), action]


def started(tmp_path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*.ready"))]


def signal_once_up(tmp_path, count: int, signum: int) -> threading.Thread:
    """A thread that sends `signum` to this process once `count` children have written their handshake."""
    def send() -> None:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while len(list(tmp_path.glob("*.ready"))) < count:
            if time.monotonic() > deadline:
                return  # the children end on their own; the test fails on what they wrote
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_every_worker_runs_in_a_session_of_its_own_and_success_is_zero(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run_local_workers(workers(tmp_path, "exit:0"), 3) == 0
    children = started(tmp_path)
    assert len(children) == 3 and len({child["pid"] for child in children}) == 3
    assert all(child["sid"] == child["pid"] != os.getsid(0) for child in children)  # start_new_session
    share = str(max(1, (os.cpu_count() or 1) // 3))
    assert [child["threads"] for child in children] == [share] * 3  # the cores shared out


def test_a_thread_count_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert run_local_workers(workers(tmp_path, "exit:0"), 2) == 0
    assert [child["threads"] for child in started(tmp_path)] == ["7", "7"]


def test_a_failing_workers_exit_code_is_passed_on(tmp_path):
    assert run_local_workers(workers(tmp_path, "first-fails:3"), 2) == 3  # one failed, one succeeded
    assert len(started(tmp_path)) == 2


def test_a_worker_killed_by_a_signal_exits_128_plus_the_signal(tmp_path):
    assert run_local_workers(workers(tmp_path, f"kill:{int(signal.SIGKILL)}"), 2) == 128 + signal.SIGKILL
    assert len(started(tmp_path)) == 2


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_reach_every_worker_and_decide_the_exit_code(tmp_path, signum, code):
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    sender = signal_once_up(tmp_path, 2, signum)
    assert run_local_workers(workers(tmp_path, "wait"), 2) == code  # though each worker exited 0
    sender.join()
    pids = {child["pid"] for child in started(tmp_path)}
    name = signal.Signals(signum).name
    assert len(pids) == 2 and {int(path.stem) for path in tmp_path.glob(f"*.{name}")} == pids
    assert {number: signal.getsignal(number) for number in before} == before  # handlers put back
