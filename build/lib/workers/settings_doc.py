"""The settings as people read them: effective values, and the README's table."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from workers.settings import ENV_PREFIX, Settings


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def effective(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        out[env_name(name)] = (
            "**********" if isinstance(value, SecretStr) else (str(value) if value is not None else "")
        )
    return out


def markdown_table() -> str:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        shown = "" if default is None or default == "" else f"`{default}`"
        lines.append(f"| `{env_name(name)}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)
