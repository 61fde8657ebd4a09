"""A real Prometheus server for integration tests: Debian's `prometheus`, a private config.

It loads the repo's alert rules (deploy/prometheus/alerts.yml) and finds its targets in
file_sd files, so a test can add a worker while it runs. Scrapes and rule evaluations run
every second; the rules' `for:` durations are shortened (see ``rules_for_tests``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LOGS, ROOT, wait_until
from workers.kafka.embedded import free_port, wait_for_port

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MISSING = (
    "prometheus is not on PATH: run `make system-deps` (it installs the Debian package `prometheus`, "
    "which has the server and promtool)"
)
#: What the test copy of the rules uses for every `for:`.
TEST_FOR = "5s"


def rules_for_tests(text: str, thresholds: dict[str, float] | None = None) -> str:
    """The alert rules as a test loads them: every `for:` becomes TEST_FOR, and the named
    thresholds (``seqguard:threshold:<name>``) get other values.

    Production `for:` durations (1 to 10 minutes) ride out rebalances and blips; waiting them
    out would make a test minutes long and prove nothing more about the expressions. 5 s is
    still longer than the scrape or two in which a partition that moved may be reported by
    two workers, so a stale series that lingered would still fire, and fail the test.
    Thresholds are changed the way an operator tunes them: in the thresholds group only.
    """
    text, n = re.subn(r"^(\s+for:\s*)\S+\s*$", rf"\g<1>{TEST_FOR}", text, flags=re.MULTILINE)
    assert n, "no `for:` found in the rules"
    for name, value in (thresholds or {}).items():
        pattern = rf"(record: seqguard:threshold:{re.escape(name)}\s*\n\s*expr:\s*)vector\([^)]*\)"
        text, n = re.subn(pattern, rf"\g<1>vector({value})", text)
        assert n == 1, f"no threshold named {name} in the rules"
    return text


class PrometheusServer:
    """``prometheus`` on a free loopback port. ``jobs``: job name -> its file_sd targets."""

    def __init__(self, workdir: Path, jobs: dict[str, list[str]], thresholds: dict[str, float] | None = None) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(MISSING, pytrace=False)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alerts.yml").write_text(rules_for_tests(ALERTS.read_text(), thresholds))
        for job, targets in jobs.items():
            self.set_targets(job, targets)
        (workdir / "prometheus.yml").write_text(json.dumps(self._config(list(jobs)), indent=2))  # JSON is YAML
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"prometheus-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            cwd=workdir,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, timeout=30)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _config(jobs: list[str]) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    # file_sd: rewritten by set_targets while the server runs (inotify; 1 s as a fallback).
                    "file_sd_configs": [{"files": [f"targets-{job}.json"], "refresh_interval": "1s"}],
                }
                for job in jobs
            ],
        }

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready after {timeout} s: {self.tail()}")
            time.sleep(0.2)

    def set_targets(self, job: str, targets: list[str]) -> None:
        """Replace ``job``'s targets (host:port). Written then renamed: Prometheus never reads half a file."""
        path = self.workdir / f"targets-{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets}]))
        os.replace(tmp, path)

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the error in the body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result's samples as ``{"metric": {...}, "value": [ts, "v"]}``."""
        data = self._get("/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def alerts(self, name: str | None = None, state: str | None = "firing") -> list[dict[str, Any]]:
        """Active alerts (``state``: firing, pending, or None for both), optionally of one name."""
        alerts = self._get("/api/v1/alerts")["alerts"]
        return [
            a
            for a in alerts
            if (name is None or a["labels"]["alertname"] == name) and (state is None or a["state"] == state)
        ]

    def rules(self) -> list[dict[str, Any]]:
        """Every rule as loaded, with its health and last error."""
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["activeTargets"]  # type: ignore[no-any-return]

    async def wait_up(self, job: str, instance: str, timeout: float = 30.0) -> None:
        """Until ``instance`` of ``job`` was scraped successfully."""

        def up() -> bool:
            return any(
                t["labels"].get("job") == job and t["labels"].get("instance") == instance and t["health"] == "up"
                for t in self.targets()
            )

        await wait_until(up, timeout=timeout, what=f"prometheus scraped {job} {instance}; log: {self.log_path}")

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
