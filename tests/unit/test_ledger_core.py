"""The effect ledger's decisions (tables.ledger): on_claim for every Found, settle_lost, and
properties of owners interleaving claims and settles over one entry.

No I/O: ``Store`` mirrors the compare-and-set script of workers/ledger/redis.py (``_CAS``):
a write names the revision it expects ("": absent), stamps the store's clock (a plain int)
and gives the entry a new revision, never used before (the script's are random); a release
deletes the entry. Owners drive it as ``Ledger._claim`` and ``Ledger._settle`` do, one
compare-and-set per step, so any interleaving can be drawn, owners frozen anywhere included.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tables.ledger import Entry, EntryState, Found, Settle, Verdict, on_claim, settle_lost

LEASE = 1_000
AT = 50_000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def entry(
    state: EntryState = "claimed",
    owner: str = "a",
    *,
    at: int = AT,
    lease: int = LEASE,
    fp: str = "f",
    rev: str = "r1",
    error: str = "",
) -> Entry:
    return Entry(state, owner, at, lease, fp, rev, error)


def claim(e: Entry | None, owner: str = "b", *, fp: str = "f", now: int = AT + 1, replay: bool = False) -> Verdict:
    return on_claim(e, owner=owner, fingerprint=fp, now_ms=now, replay=replay)


# --- on_claim: one example per Found ---------------------------------------------------


@pytest.mark.parametrize("replay", [False, True])
def test_a_new_key_is_claimed(replay: bool) -> None:
    assert claim(None, replay=replay) == Verdict(Found.CLAIM)


@pytest.mark.parametrize("owner", ["a", "b"])
@pytest.mark.parametrize("replay", [False, True])
def test_a_done_entry_is_done_for_anyone_even_on_replay(owner: str, replay: bool) -> None:
    done = entry("done", "a", lease=0)
    assert claim(done, owner, replay=replay) == Verdict(Found.DONE)
    assert claim(done, owner, now=AT + 10**9, replay=replay) == Verdict(Found.DONE)  # no lease on a done entry


def test_a_failed_entry_is_failed_with_its_error_unless_replayed() -> None:
    failed = entry("failed", "a", lease=0, error="PermanentError: card declined")
    assert claim(failed) == Verdict(Found.FAILED, other="PermanentError: card declined")
    assert claim(failed, "a") == Verdict(Found.FAILED, other="PermanentError: card declined")


@pytest.mark.parametrize("owner", ["a", "b"])
def test_a_replay_claims_a_failed_entry(owner: str) -> None:
    assert claim(entry("failed", "a", lease=0, error="x"), owner, replay=True) == Verdict(Found.CLAIM)


@pytest.mark.parametrize(
    "found",
    [
        entry("claimed", "b"),  # our own claim
        entry("claimed", "a"),  # another's, within its lease
        entry("claimed", "a", at=AT - 2 * LEASE),  # another's, expired
        entry("done", "a", lease=0),
        entry("failed", "a", lease=0, error="x"),
    ],
    ids=["own-claim", "live-claim", "expired-claim", "done", "failed"],
)
@pytest.mark.parametrize("replay", [False, True])
def test_another_fingerprint_is_a_conflict_whatever_the_state(found: Entry, replay: bool) -> None:
    assert claim(found, "b", fp="g", replay=replay) == Verdict(Found.CONFLICT, other="f")


@pytest.mark.parametrize("now", [AT, AT + LEASE - 1, AT + LEASE, AT + 100 * LEASE])
def test_our_own_claim_is_claimed_again_within_or_past_its_lease(now: int) -> None:
    assert claim(entry("claimed", "b"), "b", now=now) == Verdict(Found.CLAIM)


@pytest.mark.parametrize("now", [AT - 500, AT, AT + 1, AT + LEASE // 2, AT + LEASE - 1])
def test_a_live_claim_of_another_is_busy_for_the_lease_left(now: int) -> None:
    live = entry("claimed", "a")
    assert live.lease_left_ms(now) == AT + LEASE - now
    assert claim(live, "b", now=now) == Verdict(Found.BUSY, wait_ms=AT + LEASE - now, other="a")


def test_a_take_over_happens_exactly_when_the_lease_left_reaches_zero() -> None:
    live = entry("claimed", "a")
    assert claim(live, now=AT + LEASE - 1) == Verdict(Found.BUSY, wait_ms=1, other="a")
    assert claim(live, now=AT + LEASE) == Verdict(Found.TAKE_OVER, other="a")
    assert claim(live, now=AT + LEASE + 1) == Verdict(Found.TAKE_OVER, other="a")
    assert claim(live, now=AT + 10**9) == Verdict(Found.TAKE_OVER, other="a")


def test_a_claim_with_no_lease_may_be_taken_over_at_once() -> None:
    assert claim(entry("claimed", "a", lease=0), now=AT) == Verdict(Found.TAKE_OVER, other="a")


# --- settle_lost ------------------------------------------------------------------------


def test_a_release_is_lost_only_if_another_owner_holds_the_entry() -> None:
    assert settle_lost(None, owner="a", how=Settle.RELEASE) is False  # our release had gone through
    assert settle_lost(entry("claimed", "a", rev="r2"), owner="a", how=Settle.RELEASE) is False
    assert settle_lost(entry("claimed", "b", rev="r2"), owner="a", how=Settle.RELEASE) is True
    assert settle_lost(entry("done", "b", rev="r3"), owner="a", how=Settle.RELEASE) is True


@pytest.mark.parametrize("how", [Settle.DONE, Settle.FAIL])
def test_a_done_or_failed_mark_is_lost_unless_the_entry_already_shows_it(how: Settle) -> None:
    state: EntryState = "done" if how is Settle.DONE else "failed"
    other: EntryState = "failed" if how is Settle.DONE else "done"
    assert settle_lost(entry(state, "a", rev="r2"), owner="a", how=how) is False  # a client retry that had landed
    assert settle_lost(None, owner="a", how=how) is True  # released by whoever took it over
    assert settle_lost(entry("claimed", "b", rev="r2"), owner="a", how=how) is True  # taken over, running
    assert settle_lost(entry(state, "b", rev="r3"), owner="a", how=how) is True  # taken over, settled
    assert settle_lost(entry(other, "a", rev="r2"), owner="a", how=how) is True


# --- on_claim over any entry ----------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
fps = st.sampled_from(["f", "g"])
states: st.SearchStrategy[EntryState] = st.sampled_from(["claimed", "done", "failed"])
entries = st.builds(
    Entry,
    state=states,
    owner=names,
    at_ms=st.integers(0, 10_000),
    lease_ms=st.integers(0, 5_000),
    fingerprint=fps,
    rev=st.sampled_from(["r1", "r2", "5f1c0e2a9b7d4c3e"]),
    error=st.sampled_from(["", "PermanentError: no"]),
)


@SETTINGS
@given(e=st.none() | entries, owner=names, fp=fps, now=st.integers(0, 20_000), replay=st.booleans())
def test_every_verdict_follows_from_the_entry(e: Entry | None, owner: str, fp: str, now: int, replay: bool) -> None:
    v = on_claim(e, owner=owner, fingerprint=fp, now_ms=now, replay=replay)
    if e is None:
        assert v == Verdict(Found.CLAIM)
        return
    if e.fingerprint != fp:
        assert v == Verdict(Found.CONFLICT, other=e.fingerprint)
        return
    assert v.found is not Found.CONFLICT
    if v.found is Found.DONE:
        assert e.state == "done"
    if e.state == "done":
        assert v == Verdict(Found.DONE)
    if v.found is Found.FAILED:
        assert e.state == "failed" and not replay and v.other == e.error
    if v.found is Found.BUSY:
        assert e.state == "claimed" and e.owner != owner
        assert v.wait_ms == e.lease_left_ms(now) > 0 and v.other == e.owner
    if v.found is Found.TAKE_OVER:
        assert e.state == "claimed" and e.owner != owner and e.lease_left_ms(now) <= 0 and v.other == e.owner
    if v.found is Found.CLAIM:
        assert (e.state == "claimed" and e.owner == owner) or (e.state == "failed" and replay)


# --- owners interleaving over a fake store --------------------------------------------


@dataclass
class Store:
    """One ledger entry under the _CAS script's rules, on a fake clock (ms)."""

    now: int = 0
    entry: Entry | None = None
    revisions: Iterator[int] = field(default_factory=itertools.count)

    def cas(self, expected: str, write: tuple[EntryState, str, int, str, str] | None) -> tuple[bool, Entry | None]:
        """(ok, the entry found when not ok). ``write``: (state, owner, lease, fp, error); None deletes."""
        rev = self.entry.rev if self.entry is not None else ""
        if rev != expected:
            return False, self.entry
        if write is None:
            self.entry = None
        else:
            state, owner, lease, fp, error = write
            self.entry = Entry(state, owner, self.now, lease, fp, f"rev-{next(self.revisions)}", error)
        return True, None


@dataclass
class Owner:
    name: str
    fp: str
    expected: str = ""  # the revision its next claim write names (as Ledger._claim's loop)
    holding: Entry | None = None  # the claim it won and has not settled yet


@dataclass
class Run:
    store: Store = field(default_factory=Store)
    owners: list[Owner] = field(
        default_factory=lambda: [Owner("a", "f"), Owner("b", "f"), Owner("c", "f"), Owner("d", "g")]
    )
    claims_won: int = 0
    take_overs: int = 0
    replays_won: int = 0
    done_fp: str | None = None

    def check(self) -> None:
        now, e = self.store.now, self.store.entry
        valid = [o.name for o in self.owners if o.holding is not None and o.holding.lease_left_ms(now) > 0]
        assert len(valid) <= 1, f"{valid} all hold an unexpired claim at {now}"
        if self.done_fp is not None:  # once done, done for good (no TTL here)
            assert e is not None and e.state == "done" and e.fingerprint == self.done_fp
        if e is not None and e.state == "done":
            self.done_fp = e.fingerprint
            for o in ("a", "b", "c", "z"):
                for replay in (False, True):
                    assert (
                        on_claim(e, owner=o, fingerprint=e.fingerprint, now_ms=now, replay=replay).found is Found.DONE
                    )
                    other = "g" if e.fingerprint == "f" else "f"
                    assert on_claim(e, owner=o, fingerprint=other, now_ms=now, replay=replay).found is Found.CONFLICT

    def claim(self, o: Owner, replay: bool, *, whole: bool) -> None:
        """One compare-and-set of o's claim, or (``whole``) o's claim loop to its end at once."""
        for _ in range(8 if whole else 1):
            self.claim_step(o, replay)
            if o.holding is not None or not o.expected:
                return

    def claim_step(self, o: Owner, replay: bool) -> None:
        if o.holding is not None:
            return  # it runs its effect: it settles before it claims again
        store = self.store
        before = store.entry
        ok, found = store.cas(o.expected, ("claimed", o.name, LEASE, o.fp, ""))
        if ok:
            self.claims_won += 1
            if before is not None:  # written over an entry: the verdict that allowed it must still hold
                assert before.fingerprint == o.fp
                if before.state == "claimed" and before.owner != o.name:
                    assert before.lease_left_ms(store.now) <= 0, "a live claim was taken over"
                    self.take_overs += 1
                elif before.state == "failed":
                    self.replays_won += 1
                else:
                    assert before.state == "claimed" and before.owner == o.name
            o.holding, o.expected = store.entry, ""
            return
        v = on_claim(found, owner=o.name, fingerprint=o.fp, now_ms=store.now, replay=replay)
        if v.found is Found.TAKE_OVER:
            assert found is not None and found.lease_left_ms(store.now) <= 0
        o.expected = found.rev if found is not None and v.found in (Found.CLAIM, Found.TAKE_OVER) else ""

    def settle_step(self, o: Owner, how: Settle) -> None:
        if o.holding is None:
            return
        store, held = self.store, o.holding
        before = store.entry
        write = None if how is Settle.RELEASE else (how.value, o.name, 0, o.fp, "x" if how is Settle.FAIL else "")
        ok, found = store.cas(held.rev, write)  # type: ignore[arg-type]
        o.holding = None
        if ok:
            # A compare-and-set on our claim's revision may only ever overwrite our claim.
            assert before is not None and before.owner == o.name and before.at_ms == held.at_ms, (
                f"{o.name}'s settle ({how.value}) with revision {held.rev} overwrote {before}"
            )
        else:
            assert settle_lost(found, owner=o.name, how=how) or (how is Settle.RELEASE and found is None)


def drive(ops: list[tuple[Any, ...]], *, stale_owners_act: bool) -> Run:
    """Apply ``ops``. With ``stale_owners_act``, an owner may freeze anywhere (between the
    read and the write of its claim loop, or holding its claim past its lease) and act
    again later. Without, an owner whose claim expired never acts again (it died holding
    it), and a claim loop runs to its end in one step (nobody froze in the middle)."""
    run = Run()
    for op in ops:
        kind = op[0]
        if kind == "tick":
            run.store.now += op[1]
        else:
            o = run.owners[op[1]]
            if o.holding is not None and o.holding.lease_left_ms(run.store.now) <= 0 and not stale_owners_act:
                continue
            if kind == "claim":
                run.claim(o, op[2], whole=not stale_owners_act)
            else:
                run.settle_step(o, op[2])
        run.check()
    return run


owner_ix = st.sampled_from([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])  # d (fingerprint g) less often: it blocks the rest
ticks = st.tuples(st.just("tick"), st.sampled_from([1, LEASE // 2, LEASE - 1, LEASE]) | st.integers(0, 2 * LEASE))
claims = st.tuples(st.just("claim"), owner_ix, st.booleans())


def op_lists(settles: list[Settle]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    settle = st.tuples(st.just("settle"), owner_ix, st.sampled_from(settles))
    return st.lists(st.one_of(ticks, ticks, claims, claims, claims, settle), min_size=8, max_size=80)


@SETTINGS
@given(ops=op_lists([Settle.DONE, Settle.FAIL]))
def test_owners_that_mark_done_or_failed_never_share_a_live_claim(ops: list[tuple[Any, ...]]) -> None:
    """Any interleaving, owners frozen anywhere acting again included: at most one unexpired
    claim, a take-over only after the lease ran out, a done entry stays done (DONE for its
    fingerprint, CONFLICT for another); and, with no releases, every claim won past the
    first took over an expired claim or replayed a failed entry."""
    run = drive(ops, stale_owners_act=True)
    assert run.claims_won <= 1 + run.take_overs + run.replays_won


@SETTINGS
@given(ops=op_lists([Settle.DONE, Settle.FAIL, Settle.RELEASE]))
def test_owners_that_die_holding_their_claim_never_share_a_live_claim(ops: list[tuple[Any, ...]]) -> None:
    """Releases too, but an owner whose claim expired never writes again (it died), and no
    claim loop stops between its read and its write."""
    drive(ops, stale_owners_act=False)


# The ABA interleaving: a revision counter that restarted after b's release would let a's
# late release (naming its revision) delete c's fresh claim, and d run the effect beside c.
ABA = [
    ("claim", 0, False),  # a claims
    ("tick", LEASE),  # a freezes past its lease
    ("claim", 1, False),  # b finds a's claim expired (TAKE_OVER)
    ("claim", 1, False),  # b takes it over
    ("settle", 1, Settle.RELEASE),  # b's effect met an outage: released, the entry deleted
    ("claim", 2, False),  # c claims the absent key: a fresh lease
    ("settle", 0, Settle.RELEASE),  # a thaws, its effect failed: its release names its own revision
    ("claim", 1, False),  # b again: c's claim must still be there (BUSY)
]


@SETTINGS
@given(ops=op_lists([Settle.DONE, Settle.FAIL, Settle.RELEASE]))
@example(ops=ABA)
def test_owners_frozen_anywhere_never_overwrite_a_newer_claim(ops: list[tuple[Any, ...]]) -> None:
    """Everything at once: releases, and owners that freeze between the read and the write of
    their claim loop or past their lease, then act again. A write names a revision only its
    own claim can have, so a frozen owner's write fails, whatever happened since."""
    drive(ops, stale_owners_act=True)


def test_a_stale_release_does_not_delete_a_newer_claim() -> None:
    store = Store(now=AT)
    assert store.cas("", ("claimed", "a", LEASE, "f", ""))[0]
    a_claim = store.entry
    assert a_claim is not None
    store.now += LEASE  # a froze past its lease
    ok, found = store.cas("", ("claimed", "b", LEASE, "f", ""))
    assert not ok and found is not None and claim(found, "b", now=store.now).found is Found.TAKE_OVER
    assert store.cas(found.rev, ("claimed", "b", LEASE, "f", ""))[0]
    assert store.entry is not None
    assert store.cas(store.entry.rev, None)[0]  # b released after an outage in its effect
    assert store.cas("", ("claimed", "c", LEASE, "f", ""))[0]  # c's claim, its lease intact
    c_claim = store.entry

    ok, found = store.cas(a_claim.rev, None)  # a thaws and releases its long expired claim
    assert not ok and store.entry == c_claim
    assert settle_lost(found, owner="a", how=Settle.RELEASE)  # a learns its claim was taken over
    assert claim(store.entry, "d", now=store.now).found is Found.BUSY
