"""Once-only side effects in Redis (redis.asyncio), for the reference domains.

A crash between a handler's effect and the offset commit makes Kafka deliver the event
again. An effect in Redis is therefore keyed by the event's idempotency key and done in one
atomic script: the marker and the effect are written together, or not at all (exactly
once). The keys of one script share a hash tag, so they sit in one Redis Cluster slot.
Markers expire after the effect TTL; an aggregate's state and history, and an outbox,
after the domain state TTL from their last write.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

# KEYS: marker, state hash, history list. ARGV: new state, marker ttl, event label, state ttl, allowed...
_TRANSITION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate', ''} end
local cur = redis.call('HGET', KEYS[2], 'state')
if not cur then cur = '' end
local ok = false
for i = 5, #ARGV do if ARGV[i] == cur then ok = true end end
if not ok then return {'invalid', cur} end
redis.call('HSET', KEYS[2], 'state', ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
return {'applied', cur}
"""

# KEYS: marker, list. ARGV: value, marker ttl, list ttl.
_PUSH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # done before: a redelivery after a crash
    INVALID = "invalid"  # the current state does not allow this transition


@dataclass(frozen=True, slots=True)
class Transition:
    outcome: Outcome
    previous: str


class Effects:
    def __init__(
        self, redis: Redis, prefix: str = "seqguard:", ttl: float = 86_400, state_ttl: float = 30 * 86_400
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = int(ttl)
        self.state_ttl = int(state_ttl)
        self._transition = redis.register_script(_TRANSITION)
        self._push_once = redis.register_script(_PUSH_ONCE)

    def aggregate_keys(self, domain: str, aggregate: str) -> tuple[str, str, str]:
        """(hash tag, state key, history key): one slot per aggregate."""
        tag = f"{{{domain}:{aggregate}}}"
        return tag, f"{self.prefix}state:{tag}", f"{self.prefix}history:{tag}"

    def _outbox_key(self, name: str) -> tuple[str, str]:
        tag = f"{{outbox:{name}}}"
        return tag, f"{self.prefix}outbox:{tag}"

    async def transition(
        self, domain: str, aggregate: str, event_key: str, label: str, allowed_from: set[str], to: str
    ) -> Transition:
        """Move an aggregate's state machine once per event, atomically with its marker."""
        tag, state, history = self.aggregate_keys(domain, aggregate)
        marker = f"{self.prefix}done:{tag}:{domain}.transition:{event_key}"
        args: list[str | int] = [to, self.ttl, label, self.state_ttl, *sorted(allowed_from)]
        outcome, previous = await self._transition(keys=[marker, state, history], args=args)
        return Transition(Outcome(_text(outcome)), _text(previous))

    async def push_once(self, effect: str, event_key: str, outbox: str, message: Any) -> bool:
        """Append ``message`` to an outbox list once per (effect, event), atomically with its
        marker (exactly once). True if it was sent now."""
        tag, key = self._outbox_key(outbox)
        keys = [f"{self.prefix}done:{tag}:{effect}:{event_key}", key]
        return bool(await self._push_once(keys=keys, args=[json.dumps(message), self.ttl, self.state_ttl]))

    async def push(self, outbox: str, message: Any) -> None:
        """Append ``message`` to an outbox, unguarded: for effects guarded by the ledger (ctx.once)."""
        _, key = self._outbox_key(outbox)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(message))
            pipe.expire(key, self.state_ttl)
            await pipe.execute()

    async def state(self, domain: str, aggregate: str) -> str:
        raw = await self.redis.hget(self.aggregate_keys(domain, aggregate)[1], "state")
        return _text(raw) if raw is not None else ""

    async def history(self, domain: str, aggregate: str) -> list[str]:
        raw = await self.redis.lrange(self.aggregate_keys(domain, aggregate)[2], 0, -1)
        return [_text(x) for x in raw]

    async def outbox(self, name: str) -> list[Any]:
        return [json.loads(x) for x in await self.redis.lrange(self._outbox_key(name)[1], 0, -1)]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
