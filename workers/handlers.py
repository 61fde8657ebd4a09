"""Handlers: plain async functions registered per event type, with versioned data models.

    registry = Registry()

    @registry.handler("order.paid", model=OrderPaidV2, version=2)
    async def on_paid(event: Envelope, data: OrderPaidV2, ctx: Context) -> None: ...

    @registry.upcaster("order.paid", from_version=1)
    def paid_v1_to_v2(data: dict) -> dict: ...

Before a handler runs, the event's data is upcast from its ``schemaversion`` to the
handler's version one step at a time, then validated by the model. A version with no
path to the current one, or data the model refuses, is a SchemaInvalid (dead-lettered).
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from workers.context import Context
from workers.envelope import Envelope
from workers.errors import SchemaInvalid

__all__ = ["Context", "Handler", "HandlerSpec", "Registry", "load_domains"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


Handler = Callable[[Envelope, Any, Context], Awaitable[None]]


@dataclass(slots=True)
class HandlerSpec:
    type: str
    fn: Handler
    model: builtins.type[BaseModel] | None = None
    version: int = 1
    timeout: float | None = None  # None: the settings' default
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    def prepare(self, event: Envelope) -> Any:
        """The event's data at this handler's version, validated by its model."""
        data = event.data
        version = event.schema_version
        if version > self.version or version < 1:
            raise SchemaInvalid(f"{self.type} schema version {version} is unknown (current: {self.version})")
        while version < self.version:
            step = self.upcasters.get(version)
            if step is None:
                raise SchemaInvalid(f"{self.type} has no upcaster from version {version}")
            if not isinstance(data, dict):
                raise SchemaInvalid(f"{self.type} v{version} data is not an object")
            try:
                data = step(data)
            except Exception as exc:  # noqa: BLE001 - bad old data (a KeyError...) must dead-letter, not escape the batch
                raise SchemaInvalid(
                    f"{self.type} v{version} data cannot be upcast: {type(exc).__name__}: {exc}"
                ) from None
            version += 1
        if self.model is None:
            return data
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise SchemaInvalid(
                f"{self.type} v{version}: {exc.error_count()} error(s): {exc.errors()[0]['msg']}"
            ) from None


class Registry:
    def __init__(self) -> None:
        self.specs: dict[str, HandlerSpec] = {}
        self._pending_upcasters: dict[str, dict[int, Upcaster]] = {}
        #: PostgreSQL statements the handlers' projections need (run at start-up, idempotent DDL).
        self.schemas: list[str] = []

    def schema(self, *statements: str) -> None:
        self.schemas.extend(statements)

    def handler(
        self, event_type: str, *, model: type[BaseModel] | None = None, version: int = 1, timeout: float | None = None
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            if event_type in self.specs:
                raise ValueError(f"a handler for {event_type!r} is already registered")
            upcasters = self._pending_upcasters.setdefault(event_type, {})
            self.specs[event_type] = HandlerSpec(event_type, fn, model, version, timeout, upcasters)
            return fn

        return register

    def upcaster(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def register(fn: Upcaster) -> Upcaster:
            self._pending_upcasters.setdefault(event_type, {})[from_version] = fn
            return fn

        return register

    def get(self, event_type: str) -> HandlerSpec | None:
        return self.specs.get(event_type)

    def merge(self, other: Registry) -> None:
        self.schemas.extend(other.schemas)
        for event_type, spec in other.specs.items():
            if event_type in self.specs:
                raise ValueError(f"a handler for {event_type!r} is registered twice")
            self.specs[event_type] = spec


def load_domains(modules: str) -> Registry:
    """One Registry from the ``registry`` attribute of each named module."""
    merged = Registry()
    for name in (m.strip() for m in modules.split(",")):
        if name:
            merged.merge(importlib.import_module(name).registry)
    return merged
