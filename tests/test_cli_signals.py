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


def _said(output: str) -> str:
    # typer's error box word-wraps: compared without its frame and line breaks.
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["top", "--once", "--url", "not-a-url"], "Invalid value for '--url': 'not-a-url' is not an http:// or https:// URL"),
        (["top", "--once", "--url", "http://127.0.0.1:abc/metrics"], "Invalid value for '--url': 'http://127.0.0.1:abc/metrics': Port"),
        (["top", "--once", "--url", "http://127.0.0.1:99999/metrics"], "Invalid value for '--url': 'http://127.0.0.1:99999/metrics': Port out of range"),
        (["dashboards", "live", "--count", "1", "--metrics-url", "localhost:9108/metrics"], "Invalid value for '--metrics-url': 'localhost:9108/metrics' is not an http:// or https:// URL"),
    ],
)
def test_a_metrics_url_that_cannot_be_one_is_refused_at_its_option(args, expected):
    # urllib raised ValueError and http.client InvalidURL from the first scrape: tracebacks.
    from typer.testing import CliRunner

    from streamwise.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in _said(result.output) and "Traceback" not in result.output


def test_top_says_in_one_line_that_a_web_page_is_not_metrics():
    import http.server
    import threading

    from typer.testing import CliRunner

    from streamwise.cli import app

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = b"<!DOCTYPE html>\n<html><body>Grafana</body></html>\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        result = CliRunner().invoke(app, ["top", "--once", "--interval", "0.01", "--url", url])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"streamwise: metrics: {url} did not answer with Prometheus metrics: it starts with '<!DOCTYPE html>'"
    ]


# Sends this process SIGINT from inside `import typer`, which streamwise.cli does first:
# where a Ctrl-C in the first tenth of a second of any command lands.
INTERRUPTED_IMPORT = """
import builtins, os, runpy, signal, sys
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "typer" and "typer" not in sys.modules:
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["streamwise", "run", "-c", "examples/phishing.yaml", "--bootstrap-servers", "127.0.0.1:1"]
runpy.run_module("streamwise", run_name="__main__")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill with SIGINT is POSIX")
def test_a_ctrl_c_while_the_command_imports_exits_130_without_a_traceback():
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=120)
    # 130 and nothing said, as typer does for a Ctrl-C once the command runs.
    assert (done.returncode, done.stderr) == (130, ""), done.stderr


def test_workers_that_all_fail_to_start_say_why_once(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWISE_")}
    # Every worker stops at its start for the missing signing key, before any service.
    done = subprocess.run(
        [sys.executable, "-m", "streamwise", "run", "-c", "examples/phishing.yaml", "--workers", "3",
         "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("streamwise: ")] == [
        "streamwise: snapshot.signing_key: required to sign snapshots (set STREAMWISE_SNAPSHOT__SIGNING_KEY), "
        "or turn snapshots off with STREAMWISE_SNAPSHOT__ENABLED=false"
    ], done.stderr
