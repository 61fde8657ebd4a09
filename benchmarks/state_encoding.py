"""Size and speed of candidate encodings for one per-aggregate state record.

    .venv/bin/python -m benchmarks.state_encoding [--repeat 41] [--target-ms 5] [--seed 7] [--out PATH]

The record (one changelog value per aggregate):
    [next_seq int|None, parked None|[seq, reason, since], last_active float, partition int,
     seen {idempotency key: applied-at float} (insertion-ordered),
     buffer [[seq, key, type, at, done, record], ...]]
    record = [topic, partition, offset, timestamp float|None, key bytes|None, value bytes,
              headers [[str, bytes|None], ...]]   (the input Kafka record, verbatim)

Shapes: (a) 10 seen IDs, empty buffer; (b) 100 seen IDs, 3 buffered records of ~600 B;
(c) 1000 seen IDs, 50 buffered records of 300-2000 B, parked. Values are CloudEvents JSON
with emoji and other non-ASCII text; header values include random non-UTF-8 bytes and None;
one record has a non-UTF-8 key, one a None key and timestamp; floats use all 53 bits.

Encode and decode are each the median of --repeat timeit runs (each long enough to last
--target-ms), in µs per record. They start from and end at the codec's in-memory form: the
state with real bytes for the stdlib/orjson rows (so bytes <-> text conversion is counted),
msgspec Structs for the Struct rows (seqguard's state classes would be those Structs). The
round-trip check compares decode(encode(x)) with x strictly: same types (bytes stay bytes),
same dict order, floats bit-identical (repr). Single process; the machine is shared, so
compare within one run.
"""

from __future__ import annotations

import argparse
import binascii
import datetime as dt
import json
import pickle
import platform
import random
import shlex
import statistics
import sys
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import Any

import msgspec
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- the state


def make_value(rng: random.Random, agg: str, seq: int, size: int) -> bytes:
    """A structured CloudEvent of about ``size`` bytes, with emoji and non-ASCII text."""
    note = "Grüße aus Köln 👋 café ✓ 🚀 \u2028 «ok»"
    doc: dict[str, Any] = {"specversion": "1.0", "id": str(uuid.UUID(int=rng.getrandbits(128))), "source": "svc-orders",
           "type": "order.updated", "time": "2026-11-21T20:15:41.123456Z", "sequence": seq, "subject": agg,
           "datacontenttype": "application/json", "data": {"note": note, "amount": rng.random() * 1000, "pad": ""}}  # fmt: skip
    raw = json.dumps(doc, ensure_ascii=False).encode()
    doc["data"]["pad"] = "x" * max(0, size - len(raw))
    return json.dumps(doc, ensure_ascii=False).encode()


def make_record(rng: random.Random, agg: str, seq: int, size: int, i: int) -> list[Any]:
    key: bytes | None = agg.encode()
    ts: float | None = 1_795_000_000 + rng.getrandbits(40) / 1e6
    if i == 1:
        key = b"\x00\xff\xfeagg-\x80\xc3("  # not UTF-8
    elif i == 2:
        key, ts = None, None
    headers = [
        ["content-type", b"application/cloudevents+json; charset=utf-8"],
        ["traceparent", f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01".encode()],
        ["x-raw", bytes(rng.randrange(256) for _ in range(24)) + b"\xff\xfe\x80\xc0"],  # any bytes
        ["x-empty", None],
        ["x-émoji", "🚀 ünïcode".encode()],
    ]
    return ["orders", rng.randrange(8), rng.randrange(10**9), ts, key, make_value(rng, agg, seq, size), headers]


def make_state(rng: random.Random, seen: int, buffered: int, sizes: tuple[int, int], parked: bool) -> list[Any]:
    now = 1_795_000_000 + rng.random() * 86_400
    ids: dict[str, float] = {}
    while len(ids) < seen:  # idempotency keys of 40-80 chars: "<source>/<uuid>"
        source = "svc-" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-") for _ in range(rng.randint(0, 39)))
        ids[f"{source}/{uuid.UUID(int=rng.getrandbits(128))}"] = now - rng.random() * 3600
    agg, nxt = "agg-00042", 1000 + seen
    buffer = [
        [nxt + 1 + i, f"svc-orders/{uuid.UUID(int=rng.getrandbits(128))}", "order.updated", now - rng.random() * 60,
         i % 7 == 3, make_record(rng, agg, nxt + 1 + i, rng.randint(*sizes), i)]
        for i in range(buffered)
    ]  # fmt: skip
    park = [nxt, "gap: waiting for the missing sequence ⏳", now - 12.345678901] if parked else None
    return [nxt, park, now, 5, ids, buffer]


SHAPES = {
    "a: 10 seen, no buffer": dict(seen=10, buffered=0, sizes=(600, 600), parked=False),
    "b: 100 seen, 3 x 600 B": dict(seen=100, buffered=3, sizes=(600, 600), parked=False),
    "c: 1000 seen, 50 x 0.3-2 kB": dict(seen=1000, buffered=50, sizes=(300, 2000), parked=True),
}


# --------------------------------------------------------------------------- msgspec Structs


def struct(name: str, **fields: Any) -> Any:
    return msgspec.defstruct(name, list(fields.items()), array_like=True)


Record: Any = struct("Record", topic=str, partition=int, offset=int, timestamp=float | None, key=bytes | None, value=bytes,
                headers=list[tuple[str, bytes | None]])  # fmt: skip
Entry: Any = struct("Entry", seq=int, key=str, type=str, at=float, done=bool, record=Record)
Parked: Any = struct("Parked", seq=int, reason=str, since=float)
State = struct("State", next_seq=int | None, parked=Parked | None, last_active=float, partition=int,
               seen=dict[str, float], buffer=list[Entry])  # fmt: skip


def to_struct(s: list[Any]) -> Any:
    nxt, park, last, pt, seen, buf = s
    entries = [Entry(q, k, t, a, d, Record(*r[:6], [(hk, hv) for hk, hv in r[6]])) for q, k, t, a, d, r in buf]
    return State(nxt, Parked(*park) if park else None, last, pt, dict(seen), entries)


def canon(x: Any) -> Any:
    """Structs and tuples -> lists, recursively: the form the round-trip check compares."""
    if isinstance(x, msgspec.Struct):
        return [canon(v) for v in msgspec.structs.astuple(x)]
    if isinstance(x, list | tuple):
        return [canon(v) for v in x]
    if isinstance(x, dict):
        return {k: canon(v) for k, v in x.items()}
    return x


def same(a: Any, b: Any) -> bool:
    """Strict equality: types, dict order, bit-identical floats."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return repr(a) == repr(b) if isinstance(a, float) else a == b


# --------------------------------------------------------------------------- codecs


def map_bytes(s: list[Any], f: Callable[[Any], Any], vf: Callable[[Any], Any]) -> list[Any]:
    """The state with record keys and header values mapped by ``f``, record values by ``vf``."""

    def rec(r: list[Any]) -> list[Any]:
        return [*r[:4], None if r[4] is None else f(r[4]), vf(r[5]),
                [[k, None if v is None else f(v)] for k, v in r[6]]]  # fmt: skip

    return [*s[:5], [[*e[:5], rec(e[5])] for e in s[5]]]


latin1, unlatin1 = methodcaller("decode", "latin-1"), methodcaller("encode", "latin-1")
utf8, unutf8 = methodcaller("decode", "utf-8"), methodcaller("encode", "utf-8")


def b64(b: bytes) -> str:
    return binascii.b2a_base64(b, newline=False).decode("ascii")


@dataclass
class Codec:
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    native: Callable[[list[Any]], Any] = lambda s: s
    acceptable: bool = True  # usable in the product


def codecs() -> list[Codec]:
    mp_struct_dec = msgspec.msgpack.Decoder(State)
    mp_enc, mp_dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    js_enc, js_dec = msgspec.json.Encoder(), msgspec.json.Decoder(State)
    ascii_enc = json.JSONEncoder(separators=(",", ":")).encode  # built once: json.dumps(**kw) builds one per call
    utf8_enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    a2b = binascii.a2b_base64
    return [
        Codec("pickle protocol 5 (reference: unsafe)", lambda s: pickle.dumps(s, 5), pickle.loads, acceptable=False),
        Codec("json, value UTF-8, rest latin-1 (today)", lambda s: ascii_enc(map_bytes(s, latin1, utf8)).encode(),
              lambda b: map_bytes(json.loads(b), unlatin1, unutf8)),
        Codec("json, bytes latin-1, ensure_ascii=False", lambda s: utf8_enc(map_bytes(s, latin1, latin1)).encode(),
              lambda b: map_bytes(json.loads(b), unlatin1, unlatin1)),
        Codec("json, bytes base64", lambda s: ascii_enc(map_bytes(s, b64, b64)).encode(),
              lambda b: map_bytes(json.loads(b), a2b, a2b)),
        Codec("orjson, bytes latin-1", lambda s: orjson.dumps(map_bytes(s, latin1, latin1)),
              lambda b: map_bytes(orjson.loads(b), unlatin1, unlatin1)),
        Codec("msgspec json, Struct array_like (base64)", js_enc.encode, js_dec.decode, to_struct),
        Codec("msgspec msgpack, Struct array_like", mp_enc.encode, mp_struct_dec.decode, to_struct),
        Codec("msgspec msgpack, plain lists/dicts", mp_enc.encode, mp_dec.decode),
    ]  # fmt: skip


# --------------------------------------------------------------------------- measuring


def per_call_us(fn: Callable[[], Any], repeat: int, target_s: float) -> float:
    timer = timeit.Timer(fn)
    once = min(timer.repeat(repeat=3, number=1))
    number = max(1, int(target_s / max(once, 1e-7)))
    return 1e6 * statistics.median(timer.repeat(repeat=repeat, number=number)) / number


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for shape, spec in SHAPES.items():
        state = make_state(random.Random(args.seed), **spec)  # type: ignore[arg-type]
        for codec in codecs():
            native = codec.native(state)
            blob = codec.encode(native)
            ok = same(canon(codec.decode(blob)), state)
            rows.append({
                "shape": shape, "codec": codec.name, "acceptable": codec.acceptable, "bytes": len(blob), "ok": ok,
                "encode_us": per_call_us(lambda: codec.encode(native), args.repeat, args.target_ms / 1000),  # noqa: B023
                "decode_us": per_call_us(lambda: codec.decode(blob), args.repeat, args.target_ms / 1000),  # noqa: B023
            })  # fmt: skip
    return rows


def recommend(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Among product-acceptable codecs that round-trip every shape, the lowest sum over shapes of
    size/smallest + (encode+decode)/fastest. Within 3% of it is a tie, won by the first listed
    (Structs before plain lists: same bytes, typed and checked decode)."""
    order = [r["codec"] for r in rows if r["shape"] == next(iter(SHAPES))]
    score = dict.fromkeys((c for c in order if all(r["ok"] and r["acceptable"] for r in rows if r["codec"] == c)), 0.0)
    for shape in SHAPES:
        mine = [r for r in rows if r["shape"] == shape and r["codec"] in score]
        small, fast = min(r["bytes"] for r in mine), min(r["encode_us"] + r["decode_us"] for r in mine)
        for r in mine:
            score[r["codec"]] += r["bytes"] / small + (r["encode_us"] + r["decode_us"]) / fast
    tied = [c for c in score if score[c] <= 1.03 * min(score.values())]
    why = f"score {score[tied[0]]:.2f}; {2 * len(SHAPES)} = smallest and fastest in every shape"
    return tied[0], why + (f"; tied within 3% with: {', '.join(tied[1:])}" if tied[1:] else "")


def report(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> list[str]:
    width = max(len(r["codec"]) for r in rows)
    head = f"{'codec':<{width}}  {'bytes':>8}  {'encode µs':>10}  {'decode µs':>10}  round-trip"
    out = [
        f"seqguard per-aggregate state encoding, {dt.datetime.now().isoformat(timespec='seconds')}",
        f"python {platform.python_version()}, msgspec {msgspec.__version__}, orjson {orjson.__version__}; "
        f"median of {args.repeat} timeit runs of >= {args.target_ms} ms each; shared machine: compare within one run",
    ]
    for shape in SHAPES:
        out += ["", f"({shape})", head, "-" * len(head)]
        for r in (r for r in rows if r["shape"] == shape):
            out.append(
                f"{r['codec']:<{width}}  {r['bytes']:>8,}  {r['encode_us']:>10.1f}  {r['decode_us']:>10.1f}  "
                f"{'exact' if r['ok'] else 'FAILED'}"
            )
    best, why = recommend(rows)
    out += [
        "",
        "Round-trip: decode(encode(x)) == x with bytes kept bytes (non-UTF-8 keys and header values,",
        "None headers), emoji in values, dict order, bit-identical floats. 'today' decodes the value as",
        "UTF-8 text: correct only because seqguard buffers only decodable (UTF-8) events.",
        "pickle is a reference only: unpickling changelog bytes would run code an attacker put there.",
        "msgspec msgpack writes the same bytes from Structs and from lists; Structs decode to typed, checked",
        "objects and can be the state classes (the plain rows leave out converting lists to seqguard's classes).",
        f"Recommended: {best} ({why}).",
        f"reproduce: {command}",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=41, help="timeit runs per figure (the median is printed)")
    p.add_argument("--target-ms", type=float, default=5.0, help="length of one timeit run")
    p.add_argument("--seed", type=int, default=7)
    default_out = RESULTS / f"state-encoding-{dt.date.today().isoformat()}.txt"
    p.add_argument("--out", type=Path, default=default_out)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = f"cd {ROOT} && " + shlex.join([".venv/bin/python", "-m", "benchmarks.state_encoding", *argv])
    rows = measure(args)
    lines = report(rows, args, command)
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"saved: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if all(r["ok"] for r in rows if r["acceptable"]) else 1


if __name__ == "__main__":
    sys.exit(main())
