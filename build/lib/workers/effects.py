"""Once-only side effects in Redis (redis.asyncio).

A crash between a handler's effect and the offset commit makes Kafka deliver the event
again. Every effect is therefore keyed by the event's idempotency key and done in one
atomic Redis script: the marker and the effect are written together, or not at all.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

#: Redis key layout (prefix + these).
DONE_KEY = "done:{effect}:{event}"
STATE_KEY = "state:{domain}:{aggregate}"
HISTORY_KEY = "history:{domain}:{aggregate}"
OUTBOX_KEY = "outbox:{name}"

# KEYS: marker, state hash, history list. ARGV: new state, marker ttl, event label, allowed...
_TRANSITION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate', ''} end
local cur = redis.call('HGET', KEYS[2], 'state')
if not cur then cur = '' end
local ok = false
for i = 4, #ARGV do if ARGV[i] == cur then ok = true end end
if not ok then return {'invalid', cur} end
redis.call('HSET', KEYS[2], 'state', ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
return {'applied', cur}
"""

# KEYS: marker, list. ARGV: value, marker ttl.
_PUSH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
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
    def __init__(self, redis: Redis, prefix: str = "seqguard:", ttl: float = 7 * 86_400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = int(ttl)
        self._transition = redis.register_script(_TRANSITION)
        self._push_once = redis.register_script(_PUSH_ONCE)

    def key(self, template: str, **parts: str) -> str:
        return self.prefix + template.format(**parts)

    async def transition(
        self, domain: str, aggregate: str, event_key: str, label: str, allowed_from: set[str], to: str
    ) -> Transition:
        """Move an aggregate's state machine once per event, atomically with its marker."""
        keys = [
            self.key(DONE_KEY, effect=f"{domain}.transition", event=event_key),
            self.key(STATE_KEY, domain=domain, aggregate=aggregate),
            self.key(HISTORY_KEY, domain=domain, aggregate=aggregate),
        ]
        outcome, previous = await self._transition(keys=keys, args=[to, self.ttl, label, *sorted(allowed_from)])
        return Transition(Outcome(_text(outcome)), _text(previous))

    async def push_once(self, effect: str, event_key: str, outbox: str, message: Any) -> bool:
        """Append ``message`` to an outbox list once per (effect, event). True if it was sent now."""
        keys = [self.key(DONE_KEY, effect=effect, event=event_key), self.key(OUTBOX_KEY, name=outbox)]
        return bool(await self._push_once(keys=keys, args=[json.dumps(message), self.ttl]))

    async def state(self, domain: str, aggregate: str) -> str:
        raw = await self.redis.hget(self.key(STATE_KEY, domain=domain, aggregate=aggregate), "state")
        return _text(raw) if raw is not None else ""

    async def history(self, domain: str, aggregate: str) -> list[str]:
        raw = await self.redis.lrange(self.key(HISTORY_KEY, domain=domain, aggregate=aggregate), 0, -1)
        return [_text(x) for x in raw]

    async def outbox(self, name: str) -> list[Any]:
        return [json.loads(x) for x in await self.redis.lrange(self.key(OUTBOX_KEY, name=name), 0, -1)]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
