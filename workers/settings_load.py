"""Building a settings model from the environment and ./.env, or one line saying what is wrong.

Generic over the pydantic-settings class (workers/settings.py passes its own), so this
module does not import the model it loads.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

from dotenv import dotenv_values
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsError as SourceError

from workers.settings_types import describe_errors, unknown_names

M = TypeVar("M", bound=BaseSettings)


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line naming each bad variable."""


def _prefix(model: type[BaseSettings]) -> str:
    return str(model.model_config.get("env_prefix", ""))


def _env_file(model: type[BaseSettings]) -> dict[str, str]:
    path = Path(str(model.model_config.get("env_file") or ""))
    return {k: v or "" for k, v in dotenv_values(path).items()} if path.name and path.is_file() else {}


def env_names(model: type[BaseSettings]) -> frozenset[str]:
    """Every setting's variable name: <prefix><FIELD>."""
    return frozenset(_prefix(model) + name.upper() for name in model.model_fields)


def explain(model: type[BaseSettings], exc: ValidationError) -> list[str]:
    """``invalid setting <NAME>='value': why`` per bad field, the value as written (secrets masked)."""
    raw: Mapping[str, str] = {k.upper(): v for k, v in _env_file(model).items()} | {
        k.upper(): v for k, v in os.environ.items()
    }
    secret = {n for n, f in model.model_fields.items() if SecretStr in (f.annotation, *get_args(f.annotation))}
    return describe_errors(exc, _prefix(model), raw, secret)


def load(model: type[M], allowed: Collection[str], overrides: Mapping[str, Any]) -> M:
    """``model(**overrides)`` after checking every prefixed name in the environment and .env.

    Unknown names are errors (a typo would otherwise leave a default in force), reported with
    the closest setting's name together with every invalid value: one SettingsError, one line.
    """
    prefix, known, in_file = _prefix(model), env_names(model), _env_file(model)
    problems = unknown_names(os.environ, prefix, known, allowed)
    only_in_file = [name for name in in_file if name not in os.environ]
    where = model.model_config.get("env_file")
    problems += [f"{p} in {where}" for p in unknown_names(only_in_file, prefix, known, allowed)]
    settings = None
    try:
        settings = model(**overrides)
    except ValidationError as exc:
        problems += explain(model, exc)
    except SourceError as exc:  # a source that cannot be read (a malformed value of a structured field)
        problems.append(f"invalid settings: {exc}")
    if problems or settings is None:
        raise SettingsError("; ".join(problems) or "invalid settings")
    return settings
