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


@pytest.mark.parametrize(
    "args",
    [
        ["run", "-c", "examples/phishing.yaml", "--check", "--until-idle", "nan"],
        ["run", "-c", "examples/phishing.yaml", "--check", "--until-idle", "-1"],
        ["top", "--once", "--interval", "-1"],
        ["top", "--once", "--interval", "nan"],
        ["dashboards", "live", "--count", "1", "--interval", "0"],
    ],
)
def test_a_duration_that_is_not_one_is_refused_at_its_option(args):
    # A NaN --until-idle ran for ever; a negative --interval raised from time.sleep.
    from typer.testing import CliRunner

    from streamwise.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert ("--until-idle" if "--until-idle" in args else "--interval") in result.output
