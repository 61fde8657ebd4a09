"""docker-compose.yml: valid by the Compose Specification, and consistent with seqguard's settings.

check-jsonschema (with the Compose Specification's JSON schema built in) runs from its own
venv, `.venv-tools` (`make tools`, which `make test` runs): installed into .venv it would
upgrade click past the version Faust pins. Its Python also reads the YAML for the other
checks (ruamel.yaml comes with it; .venv has no YAML parser).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from workers.settings import env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TOOLS = Path(os.environ.get("TOOLS_VENV", ROOT / ".venv-tools"))
CHECK_JSONSCHEMA = TOOLS / "bin" / "check-jsonschema"
HINT = f"{CHECK_JSONSCHEMA} is missing: run `make tools` (it builds {TOOLS.name} with check-jsonschema)"

#: YAML to JSON with the tool venv's ruamel.yaml (merge keys << resolved, as Compose does).
TO_JSON = "import json, sys; from ruamel.yaml import YAML; print(json.dumps(YAML(typ='safe').load(open(sys.argv[1]))))"


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(HINT)
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return tool(str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = tool(str(TOOLS / "bin" / "python"), "-c", TO_JSON, str(COMPOSE))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_compose_file_is_valid_by_the_compose_specification() -> None:
    proc = validate(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_validation_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("start_period: 60s", "start_periode: 60s", 1))
    proc = validate(broken)
    assert proc.returncode != 0 and "start_periode" in proc.stdout, proc.stdout


def seqguard_variables(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per service, the SEQGUARD_* variables it sets (the x-seqguard-env anchor merged in)."""
    found = {}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping, so the anchor merges"
        found[name] = {k: str(v) for k, v in env.items() if k.startswith("SEQGUARD_")}
    return found


def test_every_seqguard_variable_of_the_compose_file_is_a_setting(compose: dict[str, Any]) -> None:
    by_service = seqguard_variables(compose)
    assert by_service["worker"] and by_service["dlq-agent"]
    used = {k for env in by_service.values() for k in env}
    assert used - env_names() == set(), "not fields of workers/settings.py: typos are ignored silently"
    raw = set(re.findall(r"^\s*(SEQGUARD_\w+):", COMPOSE.read_text(), re.MULTILINE))
    assert raw == used  # every one written in the file reaches a service


def test_redis_has_a_password_the_workers_use_and_keeps_the_ledger(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD:-") and password.endswith("}")
    for name in ("worker", "dlq-agent"):
        url = seqguard_variables(compose)[name]["SEQGUARD_REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0", (name, url)
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--maxmemory-policy"] == "noeviction" and flags["--appendonly"] == "yes"
    assert compose["services"]["redis"]["environment"]["REDISCLI_AUTH"] == password  # the healthcheck's ping


def test_worker_and_dlq_agent_healthchecks_probe_livez(compose: dict[str, Any]) -> None:
    for name in ("worker", "dlq-agent"):
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert "http://127.0.0.1:6066/livez" in test, (name, test)


def test_images_are_of_the_chosen_release_lines(compose: dict[str, Any]) -> None:
    images = {name: s.get("image", "") for name, s in compose["services"].items()}
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", images["kafka"])
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", images["prometheus"])
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", images["grafana"])
    assert re.fullmatch(r"redis:(8\.\d+|7\.4)-alpine", images["redis"])
    assert re.fullmatch(r"postgres:17-alpine", images["postgres"])
