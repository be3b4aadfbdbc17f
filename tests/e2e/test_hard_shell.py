"""A hard shell around ``warnsvc run``: what bad input and bad timing look like from outside.

Real processes, real sockets: an oversized ``Authorization`` header never puts the key into
the log; a port in use is one line and exit 2; SIGTERM in the middle of the first poll stops
cleanly, with no traceback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import free_port, warnsvc

pytestmark = pytest.mark.slow

KEY = "partner-key-for-the-log-test-0123"


def config(tmp_path: Path, *, port: int, source_url: str) -> Path:
    path = tmp_path / "warnsvc.yaml"
    path.write_text(
        f"""service:
  http: {{host: 127.0.0.1, port: {port}}}
  shutdown_timeout: 5s
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/warnsvc.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
webhooks:
  partners:
    - {{id: ngo-a, api_key: "{KEY}"}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {source_url}
    fetch: {{timeout: 30s, retries: 0}}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def silent_site() -> Iterator[str]:
    """A loopback port that accepts connections and never answers: a poll that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(50)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/populations-at-risk/"


def start(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "warnsvc", "run", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_listening(port: int, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_an_oversized_authorization_header_keeps_the_key_out_of_the_log(
    tmp_path: Path, silent_site: str
) -> None:
    port = free_port()
    proc = start(config(tmp_path, port=port, source_url=silent_site))
    try:
        wait_listening(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                b"GET /api/v1/endpoints HTTP/1.1\r\nHost: warnsvc\r\n"
                + f"Authorization: Bearer {KEY}".encode()
                + b"x" * 9000
                + b"\r\n\r\n"
            )
            answer = client.recv(64)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=30)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert KEY not in log
    assert "Traceback" not in log
    [refused] = [line for line in log.splitlines() if "request_refused" in line]
    assert "header or the request line is too long" in refused
    assert len(refused) < 200


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, silent_site: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config(tmp_path, port=port, source_url=silent_site)
        result = warnsvc("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"warnsvc: cannot listen on 127.0.0.1:{port}: address in use"
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_first_poll_stops_cleanly(
    tmp_path: Path, silent_site: str, signum: signal.Signals
) -> None:
    port = free_port()
    proc = start(config(tmp_path, port=port, source_url=silent_site))
    wait_listening(port)
    time.sleep(1.0)  # the first poll is under way, waiting on the silent site
    proc.send_signal(signum)
    _, log = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in log and "CancelledError" not in log
    assert "interrupted by the shutdown" in log
    assert log.strip().splitlines()[-1].endswith("[action=service_stopped]")
