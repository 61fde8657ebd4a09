"""PostgreSQL fixtures: a session-wide server (POSTGRES_URL, else our own) and a private one
per test for tests that stop and restart it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg import PrivatePostgres, start_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if os.environ.get("POSTGRES_URL"):
        yield os.environ["POSTGRES_URL"]
        return
    server = start_postgres()
    yield server.url
    server.destroy()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = start_postgres()
    yield server
    server.destroy()
