"""Handler registry, upcaster chains and data validation: one contract per test.

Pure: handlers are registered but never run; ``HandlerSpec.prepare`` is called directly.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from workers.domains import builds, orders
from workers.domains.orders import OrderPaid, paid_v1_to_v2
from workers.envelope import Envelope
from workers.errors import SCHEMA_INVALID, SchemaInvalid
from workers.handlers import Context, HandlerSpec, Registry, load_domains

ORDER_TYPES = {"order.created", "order.paid", "order.reserved", "order.shipped", "order.delivered"}
BUILD_TYPES = {"build.start", "build.progress", "build.complete", "service.create"}


def event(data: Any, *, version: int = 1, type_: str = "thing.happened") -> Envelope:
    return Envelope(
        id="e1", source="test", type=type_, aggregate_id="a1", sequence=1, data=data, schema_version=version
    )


async def noop(event: Envelope, data: Any, ctx: Context) -> None:
    return None


class ThingV3(BaseModel):
    name: str
    size_cm: int = Field(ge=0)
    tags: list[str]


def three_version_registry(calls: list[str] | None = None) -> Registry:
    """thing.happened: v1 {name, size_m} -> v2 {name, size_cm} -> v3 adds tags."""
    calls = [] if calls is None else calls
    registry = Registry()

    @registry.upcaster("thing.happened", from_version=1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        calls.append("1->2")
        return {"name": data["name"], "size_cm": int(data["size_m"] * 100)}

    registry.handler("thing.happened", model=ThingV3, version=3)(noop)

    @registry.upcaster("thing.happened", from_version=2)  # registered after the handler: still used
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        calls.append("2->3")
        return {**data, "tags": []}

    return registry


def spec(registry: Registry, event_type: str = "thing.happened") -> HandlerSpec:
    found = registry.get(event_type)
    assert found is not None
    return found


# --------------------------------------------------------------------------- registration


def test_handler_decorator_registers_a_spec_and_returns_the_function() -> None:
    registry = Registry()
    returned = registry.handler("thing.happened", model=ThingV3, version=3, timeout=2.5)(noop)
    assert returned is noop
    registered = spec(registry)
    assert (registered.type, registered.fn, registered.model, registered.version, registered.timeout) == (
        "thing.happened",
        noop,
        ThingV3,
        3,
        2.5,
    )


def test_handler_defaults_are_version_one_no_model_and_the_settings_timeout() -> None:
    registry = Registry()
    registry.handler("thing.happened")(noop)
    registered = spec(registry)
    assert (registered.model, registered.version, registered.timeout, registered.upcasters) == (None, 1, None, {})


def test_unknown_event_type_has_no_handler() -> None:
    assert Registry().get("nobody.handles.this") is None


def test_registering_a_second_handler_for_a_type_is_an_error() -> None:
    registry = Registry()
    registry.handler("thing.happened")(noop)
    with pytest.raises(ValueError, match="a handler for 'thing.happened' is already registered"):
        registry.handler("thing.happened")(noop)


def test_upcasters_registered_before_and_after_the_handler_are_both_attached() -> None:
    assert set(spec(three_version_registry()).upcasters) == {1, 2}


def test_upcaster_decorator_returns_the_function() -> None:
    registry = Registry()

    def step(data: dict[str, Any]) -> dict[str, Any]:
        return data

    assert registry.upcaster("thing.happened", from_version=1)(step) is step


def test_merging_a_type_registered_in_both_registries_is_an_error() -> None:
    first, second = Registry(), Registry()
    first.handler("thing.happened")(noop)
    second.handler("thing.happened")(noop)
    with pytest.raises(ValueError, match="a handler for 'thing.happened' is registered twice"):
        first.merge(second)


def test_merge_keeps_the_other_registry_upcasters() -> None:
    merged = Registry()
    merged.merge(three_version_registry())
    assert spec(merged).prepare(event({"name": "n", "size_m": 1.5})) == ThingV3(name="n", size_cm=150, tags=[])


# --------------------------------------------------------------------------- prepare


def test_current_version_without_model_passes_data_through() -> None:
    registry = Registry()
    registry.handler("thing.happened")(noop)
    data = {"anything": [1, 2]}
    assert spec(registry).prepare(event(data)) is data


def test_current_version_with_model_is_validated_into_the_model() -> None:
    prepared = spec(three_version_registry()).prepare(event({"name": "n", "size_cm": 3, "tags": ["x"]}, version=3))
    assert prepared == ThingV3(name="n", size_cm=3, tags=["x"])


def test_old_version_is_upcast_one_step_at_a_time_in_order() -> None:
    calls: list[str] = []
    prepared = spec(three_version_registry(calls)).prepare(event({"name": "n", "size_m": 2}, version=1))
    assert calls == ["1->2", "2->3"]
    assert prepared == ThingV3(name="n", size_cm=200, tags=[])


def test_upcasting_starts_at_the_event_version() -> None:
    calls: list[str] = []
    spec(three_version_registry(calls)).prepare(event({"name": "n", "size_cm": 7}, version=2))
    assert calls == ["2->3"]


def test_version_above_the_current_one_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match=r"thing.happened schema version 4 is unknown \(current: 3\)"):
        spec(three_version_registry()).prepare(event({}, version=4))


def test_version_zero_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="schema version 0 is unknown"):
        spec(three_version_registry()).prepare(event({}, version=0))


def test_negative_version_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="schema version -2 is unknown"):
        spec(three_version_registry()).prepare(event({}, version=-2))


def test_missing_upcaster_step_is_schema_invalid() -> None:
    registry = Registry()
    registry.handler("thing.happened", version=3)(noop)
    registry.upcaster("thing.happened", from_version=2)(lambda d: d)  # no step from 1
    with pytest.raises(SchemaInvalid, match="thing.happened has no upcaster from version 1"):
        spec(registry).prepare(event({}, version=1))


def test_old_data_that_is_not_an_object_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="thing.happened v1 data is not an object"):
        spec(three_version_registry()).prepare(event(["not", "an", "object"], version=1))


def test_upcaster_step_returning_a_non_object_is_schema_invalid_at_the_next_step() -> None:
    registry = Registry()
    registry.handler("thing.happened", version=3)(noop)
    registry.upcaster("thing.happened", from_version=1)(lambda d: "oops")
    registry.upcaster("thing.happened", from_version=2)(lambda d: d)
    with pytest.raises(SchemaInvalid, match="thing.happened v2 data is not an object"):
        spec(registry).prepare(event({}, version=1))


def test_upcaster_failing_on_bad_old_data_is_schema_invalid() -> None:
    # size_m missing: the v1 -> v2 step raises KeyError; it must dead-letter, not escape.
    with pytest.raises(SchemaInvalid, match="thing.happened v1 data cannot be upcast: KeyError: 'size_m'"):
        spec(three_version_registry()).prepare(event({"name": "n"}, version=1))


def test_data_the_model_refuses_is_schema_invalid_with_the_error_count() -> None:
    with pytest.raises(SchemaInvalid, match=r"thing.happened v3: 2 error\(s\): "):
        spec(three_version_registry()).prepare(event({"name": "n", "size_cm": -1}, version=3))


def test_model_failure_after_upcasting_names_the_current_version() -> None:
    with pytest.raises(
        SchemaInvalid, match=r"thing.happened v3: 1 error\(s\): Input should be greater than or equal to 0"
    ):
        spec(three_version_registry()).prepare(event({"name": "n", "size_m": -1}, version=1))


def test_schema_invalid_is_a_permanent_schema_invalid_error() -> None:
    with pytest.raises(SchemaInvalid) as info:
        spec(three_version_registry()).prepare(event({}, version=9))
    assert info.value.error_class == SCHEMA_INVALID and info.value.permanent is True


# --------------------------------------------------------------------------- reference domains


def test_load_domains_merges_the_two_reference_domains() -> None:
    registry = load_domains("workers.domains.orders,workers.domains.builds")
    assert set(registry.specs) == ORDER_TYPES | BUILD_TYPES


def test_load_domains_ignores_blanks_and_spaces() -> None:
    registry = load_domains(" workers.domains.orders , ,workers.domains.builds,")
    assert set(registry.specs) == ORDER_TYPES | BUILD_TYPES


def test_load_domains_of_nothing_is_an_empty_registry() -> None:
    assert load_domains("").specs == {}


def test_load_domains_does_not_change_the_domain_registries() -> None:
    load_domains("workers.domains.orders,workers.domains.builds")
    assert set(orders.registry.specs) == ORDER_TYPES and set(builds.registry.specs) == BUILD_TYPES


def test_load_domains_naming_a_module_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        load_domains("workers.domains.orders,workers.domains.orders")


def test_order_paid_is_version_two_with_its_model_and_other_types_version_one() -> None:
    registry = load_domains("workers.domains.orders,workers.domains.builds")
    paid = spec(registry, "order.paid")
    assert (paid.version, paid.model, set(paid.upcasters)) == (2, OrderPaid, {1})
    assert {spec(registry, t).version for t in (ORDER_TYPES | BUILD_TYPES) - {"order.paid"}} == {1}


def test_paid_v1_to_v2_converts_units_to_cents_with_usd_by_default() -> None:
    assert paid_v1_to_v2({"amount": 12.5}) == {"amount_cents": 1250, "currency": "USD"}


def test_paid_v1_to_v2_keeps_a_given_currency() -> None:
    assert paid_v1_to_v2({"amount": 3, "currency": "EUR"}) == {"amount_cents": 300, "currency": "EUR"}


def test_paid_v1_to_v2_rounds_float_error_to_the_nearest_cent() -> None:
    assert paid_v1_to_v2({"amount": 0.29})["amount_cents"] == 29  # 0.29 * 100 == 28.999999999999996


def test_paid_v1_to_v2_accepts_a_decimal_string_amount() -> None:
    assert paid_v1_to_v2({"amount": "19.99"})["amount_cents"] == 1999


def test_order_paid_v1_event_is_prepared_as_v2_model() -> None:
    paid = spec(orders.registry, "order.paid")
    assert paid.prepare(event({"amount": 12.5}, type_="order.paid")) == OrderPaid(amount_cents=1250, currency="USD")


def test_order_paid_v2_event_is_validated_without_upcasting() -> None:
    paid = spec(orders.registry, "order.paid")
    prepared = paid.prepare(event({"amount_cents": 999, "currency": "GBP"}, version=2, type_="order.paid"))
    assert prepared == OrderPaid(amount_cents=999, currency="GBP")


def test_order_paid_v1_without_amount_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="order.paid v1 data cannot be upcast: KeyError"):
        spec(orders.registry, "order.paid").prepare(event({"currency": "EUR"}, type_="order.paid"))


def test_order_paid_v1_with_a_non_numeric_amount_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="order.paid v1 data cannot be upcast: ValueError"):
        spec(orders.registry, "order.paid").prepare(event({"amount": "lots"}, type_="order.paid"))


def test_order_paid_v1_with_a_negative_amount_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match=r"order.paid v2: 1 error\(s\)"):
        spec(orders.registry, "order.paid").prepare(event({"amount": -1}, type_="order.paid"))


def test_order_paid_with_a_currency_that_is_not_three_letters_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match=r"order.paid v2: 1 error\(s\)"):
        spec(orders.registry, "order.paid").prepare(
            event({"amount_cents": 1, "currency": "EURO"}, version=2, type_="order.paid")
        )
