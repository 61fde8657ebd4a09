"""The worker's garbage collector settings (workers/gc_tuning.py), and that the worker applies them."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator

import pytest

from workers import cli, gc_tuning


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_freezes_what_is_alive_and_raises_the_thresholds(restored: None) -> None:
    gc_tuning.tune()
    assert gc.get_threshold() == gc_tuning.THRESHOLDS
    assert gc.get_freeze_count() > 1000  # this process's modules and objects


def test_the_worker_tunes_the_collector_before_it_runs() -> None:
    source = inspect.getsource(cli.worker.callback)  # type: ignore[arg-type]
    assert source.index("gc_tuning.tune()") < source.index("execute_from_commandline")
