"""Kafka security through one factory (workers/kafka/clients.py).

For each security family, Faust's clients (built from ``broker_credentials`` the way Faust
builds them) and seqguard's own (consumer, producer, admin) carry the same protocol, SASL
mechanism and credentials, and TLS contexts that complete the same real handshakes against a
TLS server of a private CA. Bad combinations are one start-up message; secrets are printed nowhere.
"""

from __future__ import annotations

import ast
import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.abc import AbstractTokenProvider
from click.testing import CliRunner
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tests.tls import KEY_PASSWORD, Pki, make_pki, server_context
from workers.app import faust_settings
from workers.kafka import clients
from workers.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SASL_PASSWORD = "sasl-password-for-tests"  # noqa: S105 - a test value, looked for in every output
CLIENT_CN = "seqguard-test-client"


class StaticToken(AbstractTokenProvider):
    """An OAUTHBEARER token provider, named by SEQGUARD_KAFKA_SASL_OAUTH_TOKEN_PROVIDER."""

    async def token(self) -> str:
        return "token-for-tests"


PROVIDER = f"{__name__}:StaticToken"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def family_settings(family: str, pki: Pki, data_dir: Path) -> dict[str, Any]:
    ssl_files = {"kafka_ssl_cafile": pki.ca, "kafka_ssl_certfile": pki.client_cert, "kafka_ssl_keyfile": pki.client_key}
    user = {"kafka_sasl_username": "api-key", "kafka_sasl_password": SASL_PASSWORD}
    return {
        "data_dir": data_dir,
        **{
            "plaintext": {},
            "ssl": {"kafka_security_protocol": "SSL", **ssl_files},
            "ssl-encrypted-key": {
                "kafka_security_protocol": "SSL",
                **ssl_files,
                "kafka_ssl_keyfile": pki.client_key_encrypted,
                "kafka_ssl_key_password": KEY_PASSWORD,
            },
            "sasl-plaintext-plain": {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                **user,
            },
            "sasl-ssl-scram-512": {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_ssl_cafile": pki.ca,
                **user,
            },
            "sasl-ssl-oauthbearer": {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "OAUTHBEARER",
                "kafka_sasl_oauth_token_provider": PROVIDER,
                "kafka_ssl_cafile": pki.ca,
            },
        }[family],
    }


#: What every client of a family must carry: protocol, mechanism, username, password, a
#: token provider, TLS, and the client certificate a TLS server sees ("" for none).
EXPECTED: dict[str, tuple[str, str | None, str | None, str | None, bool, bool, str]] = {
    "plaintext": ("PLAINTEXT", None, None, None, False, False, ""),
    "ssl": ("SSL", None, None, None, False, True, CLIENT_CN),
    "ssl-encrypted-key": ("SSL", None, None, None, False, True, CLIENT_CN),
    "sasl-plaintext-plain": ("SASL_PLAINTEXT", "PLAIN", "api-key", SASL_PASSWORD, False, False, ""),
    "sasl-ssl-scram-512": ("SASL_SSL", "SCRAM-SHA-512", "api-key", SASL_PASSWORD, False, True, ""),
    "sasl-ssl-oauthbearer": ("SASL_SSL", "OAUTHBEARER", None, None, True, True, ""),
}


def auth_of(client: Any) -> tuple[Any, ...]:
    """What an aiokafka client (its AIOKafkaClient) will connect with, the TLS context aside."""
    sasl = client._security_protocol in clients.SASL_PROTOCOLS
    return (
        client._security_protocol,
        client._sasl_mechanism if sasl else None,
        client._sasl_plain_username,
        client._sasl_plain_password,
        isinstance(client._sasl_oauth_token_provider, StaticToken),
        client._ssl_context is not None,
    )


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[tuple[int, list[str]]]:
    """A TLS server of the test CA that asks for a client certificate (and accepts none):
    its port, and the client certificate subject of each handshake."""
    peers: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        peers.append(dict(pair for rdn in cert.get("subject", ()) for pair in rdn).get("commonName", ""))
        writer.close()

    context = server_context(pki, require_client_cert=False)
    context.verify_mode = ssl.CERT_OPTIONAL
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], peers
    server.close()
    await server.wait_closed()


async def handshake(port: int, context: ssl.SSLContext, hostname: str = "localhost") -> None:
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=hostname), 10
    )
    writer.close()


@pytest.mark.parametrize("family", list(EXPECTED))
async def test_faust_and_every_aiokafka_client_connect_alike(
    family: str, pki: Pki, tmp_path: Path, tls_server: tuple[int, list[str]]
) -> None:
    settings = Settings(**family_settings(family, pki, tmp_path))
    options = clients.client_options(settings)
    app = faust.App(settings.app_id, **faust_settings(settings))
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context).keys() == options.keys()

    built = {
        "faust consumer": app.consumer._thread._create_worker_consumer(app.transport),
        "faust producer": app.producer._new_producer(),
        "consumer": clients.consumer(settings, group_id=None),
        "producer": clients.producer(settings, acks="all"),
        "admin": clients.admin(settings),
    }
    inner = {
        "faust consumer": built["faust consumer"]._client,
        "faust producer": built["faust producer"].client,
        "consumer": built["consumer"]._client,
        "producer": built["producer"].client,
        "admin": built["admin"]._client,
    }
    protocol, mechanism, username, password, provider, tls, client_cn = EXPECTED[family]
    try:
        assert {name: auth_of(c) for name, c in inner.items()} == {
            name: (protocol, mechanism, username, password, provider, tls) for name in inner
        }
        if tls:
            port, peers = tls_server
            for client in inner.values():
                await handshake(port, client._ssl_context)
            assert peers == [client_cn] * len(inner)  # the client certificate, or none, from every client
    finally:
        for name, client in built.items():
            await (client.close() if name == "admin" else client.stop())


async def test_a_ca_that_did_not_sign_the_broker_fails_the_handshake(
    pki: Pki, tmp_path: Path, tls_server: tuple[int, list[str]]
) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.other_ca, data_dir=tmp_path)
    context = clients.ssl_context(settings)
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(tls_server[0], context)


async def test_check_hostname_false_keeps_the_ca_check_only(
    pki: Pki, tmp_path: Path, tls_server: tuple[int, list[str]]
) -> None:
    strict = clients.ssl_context(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca))
    loose = clients.ssl_context(
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca, kafka_ssl_check_hostname=False)
    )
    assert strict is not None and loose is not None
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await handshake(tls_server[0], strict, hostname="kafka.example.com")
    await handshake(tls_server[0], loose, hostname="kafka.example.com")
    assert loose.verify_mode == ssl.CERT_REQUIRED


def test_faust_credentials_by_family(pki: Pki, tmp_path: Path) -> None:
    kinds = {
        family: type(clients.faust_credentials(Settings(**family_settings(family, pki, tmp_path)))).__name__
        for family in EXPECTED
    }
    assert kinds == {
        "plaintext": "NoneType",
        "ssl": "SSLCredentials",
        "ssl-encrypted-key": "SSLCredentials",
        "sasl-plaintext-plain": "SASLCredentials",
        "sasl-ssl-scram-512": "SASLCredentials",
        "sasl-ssl-oauthbearer": "OAuthCredentials",
    }
    oauth = clients.faust_credentials(Settings(**family_settings("sasl-ssl-oauthbearer", pki, tmp_path)))
    assert oauth.oauth_cb is clients.token_provider(PROVIDER)  # type: ignore[union-attr] - one provider per process


async def test_a_kafka_target_keeps_its_security_with_other_servers(pki: Pki, tmp_path: Path) -> None:
    settings = Settings(**family_settings("sasl-ssl-scram-512", pki, tmp_path))
    moved = clients.kafka(settings, servers="b-1.example:9096")
    assert str(moved) == "b-1.example:9096" and moved.options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert SASL_PASSWORD not in repr(moved)
    assert clients.kafka("127.0.0.1:9092").options == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(TypeError, match="security_protocol"):  # the factory's security cannot be overridden
        clients.consumer(settings, security_protocol="PLAINTEXT")


# --------------------------------------------------------------------------- the start-up check


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for name in [n for n in os.environ if n.startswith("SEQGUARD_")]:
        monkeypatch.delenv(name)
    yield monkeypatch


def problems(pki: Pki, tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    ssl_ = {"SEQGUARD_KAFKA_SECURITY_PROTOCOL": "ssl"}  # any case
    sasl = {"SEQGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    plain = {**sasl, "SEQGUARD_KAFKA_SASL_MECHANISM": "plain"}
    oauth = {**sasl, "SEQGUARD_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}
    return [
        (
            {"SEQGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
            "the protocol is PLAINTEXT, yet SEQGUARD_KAFKA_SASL_MECHANISM is set",
        ),
        (sasl, "the protocol SASL_SSL needs SEQGUARD_KAFKA_SASL_MECHANISM"),
        ({**plain, "SEQGUARD_KAFKA_SASL_USERNAME": "u"}, "the SASL mechanism PLAIN needs SEQGUARD_KAFKA_SASL_PASSWORD"),
        ({**plain, "SEQGUARD_KAFKA_SASL_PASSWORD": SASL_PASSWORD}, "needs SEQGUARD_KAFKA_SASL_USERNAME"),
        (
            {"SEQGUARD_KAFKA_SASL_USERNAME": "u", "SEQGUARD_KAFKA_SASL_PASSWORD": SASL_PASSWORD},
            "yet SEQGUARD_KAFKA_SASL_USERNAME, SEQGUARD_KAFKA_SASL_PASSWORD are set",
        ),
        (oauth, "the OAUTHBEARER mechanism needs SEQGUARD_KAFKA_SASL_OAUTH_TOKEN_PROVIDER"),
        ({**oauth, "SEQGUARD_KAFKA_SASL_OAUTH_TOKEN_PROVIDER": "no_such_module:x"}, "cannot be loaded"),
        (
            {**oauth, "SEQGUARD_KAFKA_SASL_OAUTH_TOKEN_PROVIDER": "os:getcwd"},
            "not an aiokafka.abc.AbstractTokenProvider",
        ),
        ({**oauth, "SEQGUARD_KAFKA_SASL_OAUTH_TOKEN_PROVIDER": "tokens"}, "is not module:attribute"),
        ({"SEQGUARD_KAFKA_SSL_CAFILE": str(pki.ca)}, "the protocol is PLAINTEXT, yet SEQGUARD_KAFKA_SSL_CAFILE is set"),
        ({**ssl_, "SEQGUARD_KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem")}, "SEQGUARD_KAFKA_SSL_CAFILE="),
        ({**ssl_, "SEQGUARD_KAFKA_SSL_CAFILE": str(not_pem)}, "cannot load the Kafka TLS files"),
        (
            {**ssl_, "SEQGUARD_KAFKA_SSL_KEYFILE": str(pki.client_key)},
            "a key file without its certificate: set SEQGUARD_KAFKA_SSL_CERTFILE",
        ),
        (
            {
                **ssl_,
                "SEQGUARD_KAFKA_SSL_CERTFILE": str(pki.client_cert),
                "SEQGUARD_KAFKA_SSL_KEYFILE": str(pki.client_key_encrypted),
            },
            "the key file is encrypted: set SEQGUARD_KAFKA_SSL_KEY_PASSWORD",
        ),
        (
            {
                **ssl_,
                "SEQGUARD_KAFKA_SSL_CERTFILE": str(pki.client_cert),
                "SEQGUARD_KAFKA_SSL_KEYFILE": str(pki.client_key_encrypted),
                "SEQGUARD_KAFKA_SSL_KEY_PASSWORD": "wrong-" + KEY_PASSWORD,
            },
            "cannot load the Kafka TLS files",
        ),
        (
            {"SEQGUARD_BROKER_URL": "sasl_ssl://b-1:9096"},
            "starts with kafka:// whatever the protocol: set SEQGUARD_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"SEQGUARD_REDIS_SSL_CA_CERTS": str(pki.ca)},
            "a Redis CA (SEQGUARD_REDIS_SSL_CA_CERTS) needs a TLS Redis URL",
        ),
        ({"SEQGUARD_POSTGRES_URL": f"mysql://u:{SASL_PASSWORD}@db/x"}, "must start with postgresql://"),
        (
            {"SEQGUARD_POSTGRES_URL": f"postgresql://u:{SASL_PASSWORD}@db:54x2/x"},
            "(SEQGUARD_POSTGRES_URL) is not a URL",
        ),
        ({"SEQGUARD_POSTGRES_URL": f"postgresql://u:{SASL_PASSWORD}@db/x?sslmode=strict"}, "sslmode='strict'"),
        (
            {
                "SEQGUARD_POSTGRES_URL": f"postgresql://u:{SASL_PASSWORD}@db/x?sslmode=verify-full&sslrootcert=/no/ca.pem"
            },
            "names no such file: sslrootcert=/no/ca.pem",
        ),
    ]


def test_bad_combinations_are_one_message_without_secrets(
    clean_env: pytest.MonkeyPatch, pki: Pki, tmp_path: Path
) -> None:
    missed, leaked = [], []
    for env, phrase in problems(pki, tmp_path):
        with clean_env.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                load_settings()
                message = "(no error)"
            except SettingsError as exc:
                message = str(exc)
        if phrase not in message:
            missed.append((phrase, message))
        if SASL_PASSWORD in message or KEY_PASSWORD in message or "\n" in message:
            leaked.append(message)
    assert not missed, "\n".join(f"wanted {phrase!r}, got {message!r}" for phrase, message in missed)
    assert leaked == []


def test_good_combinations_pass(clean_env: pytest.MonkeyPatch, pki: Pki, tmp_path: Path) -> None:
    for family in EXPECTED:
        values = family_settings(family, pki, tmp_path)
        settings = Settings(**values)  # raises SettingsError/ValidationError if refused
        for name, value in values.items():
            got = getattr(settings, name)
            got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            assert str(got) == str(value), (family, name, got, value)
    for url in (
        f"postgresql://u:p@db.example:5432/app?sslmode=verify-full&sslrootcert={pki.ca}",
        "postgres://u@db1:5432,db2:5432/app?sslmode=require",
        "postgresql:///app?host=/var/run/postgresql",
    ):
        s = Settings(postgres_url=url)
        assert s.postgres_url is not None and s.postgres_url.get_secret_value() == url
    s = Settings(redis_url="rediss://:pw@cache:6380/0", redis_ssl_ca_certs=pki.ca)
    assert s.redis_url.get_secret_value() == "rediss://:pw@cache:6380/0"


def test_secrets_are_never_printed(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    from workers.cli import main

    clean_env.setenv("SEQGUARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("SEQGUARD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("SEQGUARD_KAFKA_SASL_USERNAME", "api-key")
    clean_env.setenv("SEQGUARD_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    clean_env.setenv("SEQGUARD_KAFKA_SSL_CAFILE", str(pki.ca))
    clean_env.setenv("SEQGUARD_KAFKA_SSL_CERTFILE", str(pki.client_cert))
    clean_env.setenv("SEQGUARD_KAFKA_SSL_KEYFILE", str(pki.client_key_encrypted))
    clean_env.setenv("SEQGUARD_KAFKA_SSL_KEY_PASSWORD", KEY_PASSWORD)
    outputs = [CliRunner().invoke(main, args) for args in (["config"], ["config", "--json"])]
    assert [r.exit_code for r in outputs] == [0, 0], [r.output for r in outputs]
    settings = load_settings()
    for text in [
        *(r.output for r in outputs),
        repr(settings),
        str(settings),
        repr(clients.faust_credentials(settings)),
    ]:
        assert SASL_PASSWORD not in text and KEY_PASSWORD not in text
    assert "api-key" in outputs[0].output  # the username is not a secret: it helps to see it
    assert outputs[0].output.count("**********") >= 3  # redis URL, SASL password, key password


# --------------------------------------------------------------------------- no client outside the factory

CONSTRUCTORS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient"}
#: Keyword arguments that name where a client connects (``kafka=`` of cli_common.reach is for messages).
WHERE = {"bootstrap", "bootstrap_servers", "servers"}


def _bare_servers(node: ast.AST, *, into_calls: bool = True) -> bool:
    """Whether ``x.bootstrap_servers`` is in ``node``, other than where an f-string prints it
    (and, unless ``into_calls``, other than inside a call: that call's arguments are checked as such)."""
    if isinstance(node, ast.Attribute) and node.attr == "bootstrap_servers":
        return True
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Call) and not into_calls):
        return False
    return any(_bare_servers(child, into_calls=into_calls) for child in ast.iter_child_nodes(node))


def misuses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in CONSTRUCTORS:
                found.append((node.lineno, f"{name}("))
            handed = [*node.args, *(k.value for k in node.keywords if k.arg in WHERE)]
            found += [(node.lineno, "servers without security handed to a call") for a in handed if _bare_servers(a)]
            found += [(node.lineno, "bootstrap_servers=") for k in node.keywords if k.arg == "bootstrap_servers"]
        elif isinstance(node, ast.Assign | ast.Return) and node.value and _bare_servers(node.value, into_calls=False):
            found.append((node.lineno, "servers without security kept for later"))
    return sorted(found)


def test_the_misuse_check_sees_the_old_ways() -> None:
    old = """
consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
entries = read_audit(settings.bootstrap_servers, settings.audit_topic, query)
bootstrap = settings.bootstrap_servers
hooks = Hooks(bootstrap=settings.bootstrap_servers if probe else None)
servers = bootstrap or settings.bootstrap_servers
raise StartupError(f"cannot reach Kafka at {settings.bootstrap_servers}")
reach(work, kafka=settings.bootstrap_servers, what="x")
"""
    assert [line for line, _ in misuses(ast.parse(old))] == [2, 2, 3, 4, 5, 6]


def test_no_kafka_client_is_built_outside_the_factory() -> None:
    """Every client in workers/ comes from workers/kafka/clients.py: no aiokafka constructor,
    no ``bootstrap_servers=``, and no bare ``settings.bootstrap_servers`` handed to a client or
    kept for one (it would drop the security settings); messages may print it."""
    found = []
    for path in sorted((ROOT / "workers").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in ("workers/kafka/clients.py", "workers/settings.py"):
            continue
        found += [f"{path.relative_to(ROOT)}:{line} {what}" for line, what in misuses(ast.parse(path.read_text()))]
    assert found == []
