"""The real ``seqguard`` command with settings as people write them: units, any case, typos, .env, exit 2.

Every run is a subprocess in a temporary working directory with no SEQGUARD_ variable but the
test's own, so neither the caller's environment nor a stray .env can decide the outcome.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workers.kafka.embedded import free_port
from workers.settings_types import DURATION_HINT

SEQGUARD = str(Path(sys.executable).with_name("seqguard"))
BAD_GAP = f"seqguard: invalid setting SEQGUARD_GAP_TIMEOUT='abc': {DURATION_HINT}"


def run(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("SEQGUARD_")}
    return subprocess.run(
        [SEQGUARD, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_units_and_any_case_are_accepted(tmp_path: Path) -> None:
    done = run(["config", "--json"], tmp_path, SEQGUARD_STATE_TTL="24h", SEQGUARD_LOG_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    assert float(values["SEQGUARD_STATE_TTL"]) == 86_400
    assert values["SEQGUARD_LOG_LEVEL"] == "info"


def test_a_mistyped_variable_exits_2_with_the_suggestion(tmp_path: Path) -> None:
    done = run(["config"], tmp_path, SEQGUARD_GAP_TIMOUT="5")
    assert done.returncode == 2
    assert done.stderr == "seqguard: unknown setting SEQGUARD_GAP_TIMOUT (did you mean SEQGUARD_GAP_TIMEOUT?)\n"
    assert done.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["config"],
        ["policies"],
        ["dlq", "list"],
        ["aggregates", "resolve", "a", "--skip-to", "2", "--reason", "r"],
        ["gaps"],
        ["audit"],
        ["scan", "some.topic"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_bad_value_is_one_line_and_exit_2_for_every_command(tmp_path: Path, command: list[str]) -> None:
    done = run(command, tmp_path, SEQGUARD_GAP_TIMEOUT="abc")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.endswith(BAD_GAP.removeprefix("seqguard: "))  # scan says "seqguard scan: ..."
    if command == ["worker"]:
        assert line == BAD_GAP


def test_dotenv_in_the_working_directory_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SEQGUARD_STATE_TTL=2h\nSEQGUARD_APP_ID=from-file\nSEQGUARD_GAP_POLICY=Park\n")
    done = run(["config", "--json"], tmp_path, SEQGUARD_APP_ID="from-env")
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    assert float(values["SEQGUARD_STATE_TTL"]) == 7_200
    assert (values["SEQGUARD_APP_ID"], values["SEQGUARD_GAP_POLICY"]) == ("from-env", "park")
    (tmp_path / ".env").write_text("SEQGUARD_GAP_TIMOUT=5\n")
    done = run(["config"], tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "seqguard: unknown setting SEQGUARD_GAP_TIMOUT (did you mean SEQGUARD_GAP_TIMEOUT?) in .env\n",
    )


class SilentBroker:
    """Accepts connections and never answers: a broker behind a black hole."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.first_accept: float | None = None
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.first_accept = self.first_accept or time.monotonic()
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def worker_without_topic_creation(tmp_path: Path, redis_url: str, broker: str, timeout: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("SEQGUARD_")}
    env = {
        **clean,
        "PYTHONWARNINGS": "always::ResourceWarning",  # an unclosed client would say so
        "SEQGUARD_CREATE_TOPICS": "false",
        "SEQGUARD_BROKER_URL": f"kafka://{broker}",
        "SEQGUARD_REDIS_URL": redis_url,  # reachable: the only failure is Kafka's
        "SEQGUARD_STARTUP_TIMEOUT": timeout,
        "SEQGUARD_WEB_PORT": str(free_port()),
        "SEQGUARD_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.Popen(
        [SEQGUARD, "worker"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_worker_checks_the_broker_even_when_it_creates_no_topics(tmp_path: Path, redis_url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = worker_without_topic_creation(tmp_path, redis_url, dead, "5")
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a worker that did not check would run on: never leave it behind
    assert proc.returncode == 2, out
    failed = [line for line in out.splitlines() if "start-up failed" in line]
    assert len(failed) == 1 and f"cannot reach Kafka at {dead}" in failed[0], out
    assert "Unclosed" not in out and "Traceback" not in out, out


def test_a_silent_broker_fails_start_up_within_the_startup_timeout(tmp_path: Path, redis_url: str) -> None:
    silent = SilentBroker()
    proc = worker_without_topic_creation(tmp_path, redis_url, f"127.0.0.1:{silent.port}", "2")
    try:
        out, _ = proc.communicate(timeout=120)
        ended = time.monotonic()
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == 2, out
    assert f"cannot reach Kafka at 127.0.0.1:{silent.port}" in out, out
    assert silent.first_accept is not None
    # From its connection to the process's end: the 2 s timeout, plus shutdown on a busy machine.
    assert ended - silent.first_accept < 2 + 10, out
    assert "Unclosed" not in out and "Traceback" not in out, out
