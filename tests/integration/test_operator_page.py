"""The operator page in a real browser (Debian's headless Chromium), and `seqguard audit` over a
real audit topic: gaps parked, an operator's resolve and a DLQ replay, in order.
Real broker, real Redis, real worker and CLI processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.harness import (
    LOGS,
    ROOT,
    Deployment,
    Worker,
    audit_log,
    consume_all,
    event,
    metric_value,
    produce,
    run_cli,
    wait_until,
)

POLICIES = """
[types."ledger.entry"]
ordering = "strict"   # a gap always parks
gap_timeout = 1
"""
HOSTILE = "<script>alert(1)</script>"
NORMAL = "ledger-7"
FAILED = "order-9"  # order.shipped before it was paid: dead-lettered, the order parks
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Dom(HTMLParser):
    """The tags and the visible text of a page (style content left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if not self._in_style:
            self.text.append(data)


def chromium(url: str, tmp: Path, *args: str) -> str:
    """Headless Chromium's output for ``url``; its own HOME and profile in ``tmp``."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found at /usr/bin/chromium: `make system-deps` installs Debian's chromium")
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}"]
    cmd += ["--no-first-run", "--disable-extensions", *args, url]
    proc = subprocess.run(cmd, env={**os.environ, "HOME": str(tmp)}, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode()


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), ""


async def audited(bootstrap: str, topic: str, kind: str, n: int) -> bool:
    return sum(1 for _, body in await audit_log(bootstrap, topic) if body["kind"] == kind) >= n


def audit_cli(deployment: Deployment, *args: str) -> list[dict]:
    return json.loads(run_cli(deployment, "audit", "--json", *args).stdout)


async def test_operator_page_shows_parked_aggregates_escaped_and_audit_shows_operators(
    broker, redis_url, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={"SEQGUARD_POLICY_FILE": str(policy_file), "SEQGUARD_GAP_CHECK_INTERVAL": "0.3"},
    )
    await deployment.create_topics()
    settings = deployment.settings()
    worker = Worker(deployment)
    await worker.ready()
    # Two strict ledgers miss their 2 and park after 1 s; the order's first event fails for good.
    await produce(
        broker.bootstrap,
        settings.input_topic,
        [event(a, s, "ledger.entry") for a in (HOSTILE, NORMAL) for s in (1, 3)]
        + [event(FAILED, 1, "order.shipped"), event(FAILED, 2, "order.delivered")],
    )
    await wait_until(
        lambda: metric_value(worker.metrics(), "seqguard_parked_aggregates") == 3,
        timeout=45,
        what="three aggregates parked",
    )
    # Both are written before the page reads them (the page reads the DLQ every 30 s at most).
    await consume_all(broker.bootstrap, settings.dlq, expect=1, timeout=30)
    await wait_until(
        lambda: audited(broker.bootstrap, settings.audit_topic, "gap_parked", 2),
        timeout=30,
        what="two gap_parked records",
    )

    url = f"http://127.0.0.1:{worker.port}/"
    _, _, body = await wait_until(
        lambda: (got := fetch(url)) and "gap_parked" in got[2] and 'id="dlq"' in got[2] and got,
        timeout=60,
        what="the page shows the audit tail and the DLQ counts",
        interval=1.0,
    )
    status, headers, _ = fetch(url + "ui")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert fetch(url, "POST")[0] == 405  # read-only
    assert HOSTILE not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<tr><td>handler_exception</td><td>1</td><td>0</td></tr>" in body  # DLQ waiting, by class

    dom = Dom()
    dom.feed(await asyncio.to_thread(chromium, url, tmp_path / "chromium", "--dump-dom"))
    text = " ".join(dom.text)
    assert "script" not in dom.tags, dom.tags
    assert HOSTILE in text  # the ID is text, shown as it is
    for aggregate in (HOSTILE, NORMAL, FAILED):
        assert aggregate in text
    assert f"seqguard aggregates resolve '{HOSTILE}' --skip-to 3" in text
    assert f"seqguard aggregates resolve {NORMAL} --skip-to 3" in text
    assert f"seqguard dlq replay --aggregate {FAILED}" in text
    assert "handler_exception" in text and "gap_parked" in text

    shot = LOGS / f"{deployment.name}-operator-page.png"
    await asyncio.to_thread(
        chromium, url, tmp_path / "chromium", f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"operator page screenshot: {shot}")

    # An operator resolves one ledger and replays the order's failed event.
    run_cli(deployment, "aggregates", "resolve", NORMAL, "--skip-to", "3", "--reason", "2 lost upstream",
            "--operator", "test")  # fmt: skip
    await wait_until(
        lambda: audited(broker.bootstrap, settings.audit_topic, "resolved", 1),
        timeout=30,
        what="the resolve audited",
    )
    run_cli(deployment, "dlq", "replay", "--aggregate", FAILED)

    ledger = audit_cli(deployment, "--aggregate", NORMAL)
    assert [r["kind"] for r in ledger] == ["gap_parked", "resolved"]
    assert ledger[1]["record"]["operator"] == "test" and ledger[1]["record"]["reason"] == "2 lost upstream"
    assert ledger[0]["time"] <= ledger[1]["time"]
    resolved = audit_cli(deployment, "--kind", "resolved")
    assert [(r["kind"], r["aggregate"]) for r in resolved] == [("resolved", NORMAL)]
    assert {r["aggregate"] for r in audit_cli(deployment, "--kind", "gap_parked")} == {HOSTILE, NORMAL}
    replayed = audit_cli(deployment, "--kind", "replayed", "--aggregate", FAILED)
    assert len(replayed) == 1
    record = replayed[0]["record"]
    assert record["seq"] == 1 and record["type"] == "order.shipped"
    assert record["error_class"] == "handler_exception" and record["dlq"].startswith(f"{settings.dlq}:")
    assert record["by"] == "seqguard dlq replay" and record["operator"] == "test"
    everything = audit_cli(deployment, "--since", "15m")
    assert [r["kind"] for r in everything] == ["gap_parked", "gap_parked", "resolved", "replayed"]
    assert audit_cli(deployment, "--limit", "1") == everything[-1:]
    assert audit_cli(deployment, "--since", "2099-01-01T00:00:00") == []

    lines = run_cli(deployment, "audit").stdout.decode().splitlines()
    print("seqguard audit:", *lines, sep="\n  ")
    assert len(lines) == 4 and "resolved" in lines[2] and NORMAL in lines[2] and "operator=test" in lines[2]
    worker.stop()


def test_audit_says_in_one_line_that_kafka_is_unreachable(tmp_path: Path) -> None:
    deployment = Deployment("kafka://127.0.0.1:1", "redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-m", "workers.cli", "audit"],
        env={**os.environ, **deployment.env()},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("seqguard audit: ") and "127.0.0.1:1" in err, err
    assert "Traceback" not in err and "Unclosed" not in err and proc.stdout == b""
