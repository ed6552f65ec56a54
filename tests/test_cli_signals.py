"""`streamwise run` dumps every thread's stack on SIGUSR1 and goes on running: how an
operator (or a fault test) sees where a worker that looks stuck is waiting."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, threading, time
from streamwise.cli import _dump_stacks_on_sigusr1
_dump_stacks_on_sigusr1()
waiting = threading.Event()
threading.Thread(target=waiting.wait, name="a-waiting-thread", daemon=True).start()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.2)
print("still running")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="SIGUSR1 is POSIX")
def test_sigusr1_dumps_every_thread_and_the_process_goes_on():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    # Two threads, each with its stack: the main one and the one waiting on its event.
    assert done.stderr.count("(most recent call first)") >= 2, done.stderr
    assert "in wait" in done.stderr, done.stderr
