"""The README's settings table is the settings model's, and production defaults are Kafka-valid."""

from __future__ import annotations

import re
from pathlib import Path

from workers.settings import Settings
from workers.settings_doc import effective, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_model() -> None:
    text = README.read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert block is not None, "README lacks the settings markers"
    assert block.group(1) == markdown_table(), "regenerate with: seqguard config --markdown"


def test_every_setting_is_documented() -> None:
    assert all(field.description for field in Settings.model_fields.values())


def test_config_output_masks_the_redis_url(monkeypatch) -> None:
    monkeypatch.setenv("SEQGUARD_REDIS_URL", "redis://:hunter2@cache:6379/0")
    values = effective(Settings())
    assert "hunter2" not in str(values) and "hunter2" not in repr(Settings())


def test_defaults_are_valid_for_apache_kafka() -> None:
    s = Settings()
    assert s.session_timeout >= 6 and s.heartbeat_interval < s.session_timeout / 3
    assert s.rebalance_timeout >= s.session_timeout
