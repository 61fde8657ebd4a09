"""The runbook's "what is stuck, and is it fixed?": two real workers, aggregates left with gaps
and one parked, asked through `seqguard gaps`, `seqguard aggregate` (redirected to the owner)
and `seqguard verify`, before and after the missing events arrive and the parked one is
resolved. Real broker, Redis, worker and CLI processes."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from tests.harness import ROOT, Deployment, Worker, event, produce, run_cli, wait_until
from workers.inspect import partition_of
from workers.kafka.embedded import free_port

POLICIES = """
[types."ledger.entry"]
ordering = "strict"    # a gap parks it
gap_timeout = 1
"""


def seqguard(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, whatever its exit status (run_cli insists on 0)."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env={**os.environ, **deployment.env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def raw_get(url: str) -> tuple[int, dict[str, str], Any]:
    """One GET, redirects not followed: status, headers, JSON body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        assert "application/json" in resp.getheader("content-type", ""), resp.getheaders()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def url(worker: Worker) -> str:
    return f"http://127.0.0.1:{worker.port}"


def partitions_of(worker: Worker) -> set[int]:
    status, _, body = raw_get(f"{url(worker)}/gaps")
    return set(body["partitions"]) if status == 200 else set()


async def test_gaps_aggregate_and_verify_find_what_waits_on_every_worker(broker, redis_url, tmp_path: Path) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={
            "SEQGUARD_GAP_TIMEOUT": "300",  # the ordered gaps stay open for the whole test
            "SEQGUARD_GAP_CHECK_INTERVAL": "0.3",
            "SEQGUARD_POLICY_FILE": str(policy_file),
            "SEQGUARD_WEB_HOST": "127.0.0.1",  # advertised as http://127.0.0.1:<port> (SEQGUARD_WEB_URL's default)
        },
    )
    await deployment.create_topics()
    workers = [Worker(deployment, "w1"), Worker(deployment, "w2")]
    try:
        for w in workers:
            await w.ready()
        await scenario(deployment, workers, broker.bootstrap)
    finally:
        for w in workers:
            w.stop()


async def scenario(deployment: Deployment, workers: list[Worker], bootstrap: str) -> None:
    settings = deployment.settings()

    def split() -> list[set[int]] | None:
        owned = [partitions_of(w) for w in workers]
        ok = all(owned) and set.union(*owned) == set(range(settings.partitions)) and not set.intersection(*owned)
        return owned if ok else None

    owned = await wait_until(split, timeout=60, what="both workers own partitions, every one once")

    def owner(aggregate: str) -> int:
        return next(i for i, parts in enumerate(owned) if partition_of(aggregate, settings.partitions) in parts)

    def named(prefix: str, on: int) -> str:  # an ID whose partition the given worker owns
        return next(f"{prefix}{n}" for n in range(1000) if owner(f"{prefix}{n}") == on)

    # Gaps on both workers (one ID with a slash and a space: it must survive paths and redirects).
    a, b, c, parked, fine = named("acct-a", 0), named("acct/b ", 1), named("acct-c", 0), named("ledger-", 1), "acct-ok"
    await produce(
        bootstrap,
        settings.input_topic,
        [event(a, s, "account.updated") for s in (1, 2, 4, 5)]
        + [event(b, s, "account.updated") for s in (1, 3)]
        + [event(c, 2, "account.updated")]
        + [event(parked, s, "ledger.entry") for s in (1, 3)]
        + [event(fine, s, "account.updated") for s in (1, 2, 3)],
    )
    expected = {a: ("gap", [4, 5]), b: ("gap", [3]), c: ("gap", [2]), parked: ("parked", [3]), fine: ("ok", [])}

    def settled() -> bool:
        for aggregate, (status, buffered) in expected.items():
            code, _, body = raw_get(f"{url(workers[owner(aggregate)])}/aggregates/{quote(aggregate, safe='')}")
            if code != 200 or (body["status"], body["buffered"]) != (status, buffered):
                return False
        return True

    await wait_until(settled, timeout=30, what=f"the gaps buffered and {parked} parked by its 1 s gap timeout")

    listing = json.loads(run_cli(deployment, "gaps", "--json", "--url", url(workers[0])).stdout)
    assert listing["complete"] and listing["missing_partitions"] == []
    assert set(listing["workers"]) == {url(w) for w in workers} and set(listing["workers"].values()) == {"ok"}
    held = {x["aggregate_id"]: x for x in listing["aggregates"]}
    assert {k: v["missing"] for k, v in held.items()} == {a: [[3, 3]], b: [[2, 2]], c: [[1, 1]], parked: [[2, 2]]}
    assert {k: v["status"] for k, v in held.items()} == {a: "gap", b: "gap", c: "gap", parked: "parked"}
    assert held[parked]["parked"]["reason"] == "gap" and held[parked]["parked"]["seq"] == 2
    assert {k: v["worker"] for k, v in held.items()} == {
        a: url(workers[0]),
        b: url(workers[1]),
        c: url(workers[0]),
        parked: url(workers[1]),
    }
    assert held[a]["buffered"] == [4, 5] and held[a]["next_expected"] == 3 and held[a]["last_applied"] == 2
    since = [x["since"] for x in listing["aggregates"]]
    assert since == sorted(since)  # oldest first, across both workers
    assert held[parked]["command"] == f"seqguard aggregates resolve {parked} --skip-to 3 --reason 'give up on 2'"
    text = run_cli(deployment, "gaps", "--url", url(workers[1])).stdout.decode()
    assert "aggregate" in text.splitlines()[0] and all(x in text for x in (a, b, c, parked)) and fine not in text

    # Asked of the worker that does not own it: 307 to the owner, which the CLI follows.
    status, headers, body = raw_get(f"{url(workers[0])}/aggregates/{quote(b, safe='')}")
    assert status == 307 and body == {
        "aggregate_id": b,
        "partition": partition_of(b, settings.partitions),
        "owner": url(workers[1]),
        "worker": url(workers[0]),
    }
    assert headers["Location"] == f"{url(workers[1])}/aggregates/{quote(b, safe='')}"
    shown = json.loads(run_cli(deployment, "aggregate", b, "--json", "--url", url(workers[0])).stdout)
    assert (shown["worker"], shown["next_expected"], shown["last_applied"]) == (url(workers[1]), 2, 1)
    assert (shown["buffered"], shown["missing"], shown["parked"]) == ([3], [[2, 2]], None)
    assert shown["gap_age_seconds"] > 0
    assert seqguard(deployment, "aggregate", "never-seen", "--url", url(workers[1])).returncode == 1
    assert raw_get(f"{url(workers[0])}/gaps?limit=0")[0] == raw_get(f"{url(workers[0])}/gaps?after=%21")[0] == 400
    first = raw_get(f"{url(workers[0])}/gaps?limit=1")[2]  # two held there: a cursor to the second
    second = raw_get(f"{url(workers[0])}/gaps?limit=1&after={first['next']}")[2]
    assert [x["aggregate_id"] for x in first["aggregates"] + second["aggregates"]] == sorted(
        (a, c), key=lambda k: (held[k]["since"], k)
    )
    assert second["next"] is None

    check = seqguard(deployment, "verify", "--url", url(workers[1]))
    assert check.returncode == 1, check.stderr
    assert all(x in check.stdout for x in (a, b, c, parked)) and "all clear" not in check.stdout

    # The runbook's fix: the missing events arrive, the parked ledger is resolved past its gap.
    await produce(
        bootstrap,
        settings.input_topic,
        [event(a, 3, "account.updated"), event(b, 2, "account.updated"), event(c, 1, "account.updated")],
    )
    run_cli(
        deployment,
        "aggregates",
        "resolve",
        parked,
        "--skip-to",
        "3",
        "--reason",
        "entry 2 voided",
        "--operator",
        "test",
    )

    def verified() -> subprocess.CompletedProcess[str] | None:
        done = seqguard(deployment, "verify", "--json", "--url", url(workers[0]))
        return done if done.returncode == 0 else None

    done = await wait_until(verified, timeout=30, what="seqguard verify exits 0", interval=0.5)
    report = json.loads(done.stdout)
    assert report["ok"] and report["complete"] and report["aggregates"] == []
    clear = run_cli(deployment, "verify", "--url", url(workers[0])).stdout.decode()
    assert clear.startswith("all clear") and "2 worker(s) answered for 8/8 partitions" in clear
    shown = json.loads(run_cli(deployment, "aggregate", parked, "--json", "--url", url(workers[0])).stdout)
    assert (shown["status"], shown["next_expected"], shown["last_applied"]) == ("ok", 4, 3)

    # A worker that cannot be asked is never "all clear": exit 2, one line, no traceback.
    nobody = seqguard(deployment, "verify", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "0")
    assert nobody.returncode == 2 and "all clear" not in nobody.stdout
    assert "did not answer" in nobody.stderr and "Traceback" not in nobody.stderr
