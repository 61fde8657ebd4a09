"""Every Kafka client seqguard builds, with the cluster's security: the one factory.

Faust's clients get ``faust_credentials`` (its ``broker_credentials``); seqguard's own
aiokafka clients (topic creation, DLQ reader and replay, resolve, the changelog-end probe,
the sink producer, audit, scan, the demo) come from ``consumer``/``producer``/``admin``,
which pass ``client_options``. Both are built from the same settings, so what Faust
connects with and what seqguard's clients connect with cannot drift apart.

``settings_problems`` is the start-up check of the security settings (the settings model
runs it): combinations that cannot work are one message, not a handshake failure later.
"""

from __future__ import annotations

import importlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from workers.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
#: Mechanisms that authenticate with a username and a password.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OAUTHBEARER = "OAUTHBEARER"
#: What libpq and asyncpg accept as ``sslmode``.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PROVIDER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


# --------------------------------------------------------------------------- what clients get


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (the system's CAs unless a CA file is set); None otherwise."""
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    key_password = settings.kafka_ssl_key_password
    context = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        # OpenSSL would otherwise prompt on the terminal for an encrypted key's password.
        password=key_password.get_secret_value() if key_password is not None else _no_key_password,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname  # the CA check stays on either way
    return context


def _no_key_password() -> str:
    raise ValueError(f"the key file is encrypted: set {_env('kafka_ssl_key_password')}")


@cache
def token_provider(spec: str) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider ``module:attribute`` names: an instance, or a class or
    factory called without arguments (once per process: a provider caches its token)."""
    module, _, attribute = spec.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not isinstance(found, AbstractTokenProvider) and callable(found):
        found = found()
    if not isinstance(found, AbstractTokenProvider):
        raise TypeError(f"{spec} is not an aiokafka.abc.AbstractTokenProvider (nor makes one)")
    return found


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's security keyword arguments, as Faust's ``credentials_to_aiokafka_auth`` makes
    them from ``faust_credentials`` (same keys, same values)."""
    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol == "PLAINTEXT":
        return {"security_protocol": protocol}
    if protocol == "SSL":
        return {"security_protocol": protocol, "ssl_context": context}
    if settings.kafka_sasl_mechanism == OAUTHBEARER:
        provider = token_provider(settings.kafka_sasl_oauth_token_provider)
        return {
            "security_protocol": protocol,
            "sasl_mechanism": OAUTHBEARER,
            "sasl_oauth_token_provider": provider,
            "ssl_context": context,
        }
    password = settings.kafka_sasl_password
    return {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password.get_secret_value() if password is not None else None,
        "ssl_context": context,
    }


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same security (None: PLAINTEXT). The broker URL
    keeps its ``kafka://`` scheme: Faust takes the protocol from the credentials' type and
    their SSL context (SASL over TLS when a SASL credential carries one)."""
    import faust  # not at import: the operator commands do without Faust

    options = client_options(settings)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    if options["sasl_mechanism"] == OAUTHBEARER:
        return faust.OAuthCredentials(oauth_cb=options["sasl_oauth_token_provider"], ssl_context=options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options["ssl_context"],
        mechanism=options["sasl_mechanism"],
    )


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: its options hold an SSL context
class Kafka:
    """Where a client connects (bootstrap servers ``host:port,...``) and how (``client_options``).
    Prints as its servers, for messages."""

    servers: str
    options: Mapping[str, Any] = field(default_factory=lambda: {"security_protocol": "PLAINTEXT"}, repr=False)

    def __str__(self) -> str:
        return self.servers


#: The settings, a Kafka built from them once, or bare ``host:port`` servers of a PLAINTEXT
#: broker (the embedded broker of the demo and the tests).
Target = Kafka | Settings | str


def kafka(target: Target, *, servers: str | None = None) -> Kafka:
    """``target`` as a Kafka; ``servers`` replaces its bootstrap servers, keeping its security."""
    if isinstance(target, Kafka):
        return target if servers is None else replace(target, servers=servers)
    if isinstance(target, str):
        return Kafka(servers or target)
    return Kafka(servers or target.bootstrap_servers, client_options(target))


def consumer(target: Target, **kwargs: Any) -> AIOKafkaConsumer:
    k = kafka(target)
    return AIOKafkaConsumer(bootstrap_servers=k.servers, **k.options, **kwargs)


def producer(target: Target, **kwargs: Any) -> AIOKafkaProducer:
    k = kafka(target)
    return AIOKafkaProducer(bootstrap_servers=k.servers, **k.options, **kwargs)


def admin(target: Target, **kwargs: Any) -> AIOKafkaAdminClient:
    k = kafka(target)
    return AIOKafkaAdminClient(bootstrap_servers=k.servers, **k.options, **kwargs)


# --------------------------------------------------------------------------- the start-up check


def settings_problems(settings: Settings) -> list[str]:
    """What cannot work in the connection settings, one phrase each (no secret in any). Each
    starts in lower case: the settings loader joins them into its one-line message."""
    return [*_sasl_problems(settings), *_tls_problems(settings), *_url_problems(settings)]


def _are_set(names: list[str]) -> str:
    return ", ".join(_env(n) for n in names) + (" is set" if len(names) == 1 else " are set")


def _sasl_problems(s: Settings) -> list[str]:
    protocol, mechanism = s.kafka_security_protocol, s.kafka_sasl_mechanism
    password = s.kafka_sasl_password
    values = {
        "kafka_sasl_username": bool(s.kafka_sasl_username),
        "kafka_sasl_password": password is not None and bool(password.get_secret_value()),
        "kafka_sasl_oauth_token_provider": bool(s.kafka_sasl_oauth_token_provider),
    }
    given = [name for name, value in values.items() if value]
    if protocol not in SASL_PROTOCOLS:
        unused = (["kafka_sasl_mechanism"] if mechanism else []) + given
        needs = f"{_env('kafka_security_protocol')} SASL_PLAINTEXT or SASL_SSL"
        return [f"the protocol is {protocol}, yet {_are_set(unused)}: SASL needs {needs}"] if unused else []
    if mechanism is None:
        mechanisms = ", ".join((*PASSWORD_MECHANISMS, OAUTHBEARER))
        return [f"the protocol {protocol} needs {_env('kafka_sasl_mechanism')} ({mechanisms})"]
    if mechanism == OAUTHBEARER:
        unused = [n for n in given if n != "kafka_sasl_oauth_token_provider"]
        out = _provider_problems(s.kafka_sasl_oauth_token_provider)
        return out + (
            [f"the OAUTHBEARER mechanism logs in with its token provider, yet {_are_set(unused)}"] if unused else []
        )
    missing = [_env(n) for n in ("kafka_sasl_username", "kafka_sasl_password") if n not in given]
    out = [f"the SASL mechanism {mechanism} needs {' and '.join(missing)}"] if missing else []
    if "kafka_sasl_oauth_token_provider" in given:
        out.append(f"the SASL mechanism is {mechanism}, yet {_are_set(['kafka_sasl_oauth_token_provider'])}")
    return out


def _provider_problems(spec: str) -> list[str]:
    name = _env("kafka_sasl_oauth_token_provider")
    if not spec:
        return [f"the OAUTHBEARER mechanism needs {name} (module:attribute of a token provider)"]
    if not _PROVIDER.fullmatch(spec):
        return [f"the token provider {name}={spec!r} is not module:attribute"]
    try:
        token_provider(spec)
    except Exception as exc:  # noqa: BLE001 - an import or a constructor of the operator's code: any error
        return [f"the token provider {name}={spec!r} cannot be loaded: {type(exc).__name__}: {exc}"]
    return []


def _tls_problems(s: Settings) -> list[str]:
    names = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
    given = [name for name in names if getattr(s, name) is not None]
    protocol = s.kafka_security_protocol
    if protocol not in TLS_PROTOCOLS:
        needs = f"{_env('kafka_security_protocol')} SSL or SASL_SSL"
        return [f"the protocol is {protocol}, yet {_are_set(given)}: TLS needs {needs}"] if given else []
    if s.kafka_ssl_certfile is None and (s.kafka_ssl_keyfile is not None or s.kafka_ssl_key_password is not None):
        what = "a key file" if s.kafka_ssl_keyfile is not None else "a key password"
        return [f"{what} without its certificate: set {_env('kafka_ssl_certfile')}"]
    files = ", ".join(_env(n) for n in given)
    try:
        ssl_context(s)
    except ssl.SSLError as exc:
        return [f"cannot load the Kafka TLS files ({files}): {exc} (not PEM, or a wrong key password?)"]
    except (OSError, ValueError) as exc:
        return [f"cannot load the Kafka TLS files ({files}): {exc}"]
    return []


def _url_problems(s: Settings) -> list[str]:
    out = []
    scheme = s.broker_url.partition("://")[0].upper() if "://" in s.broker_url else ""
    if scheme in ("PLAINTEXT", "SSL", *SASL_PROTOCOLS):
        protocol = f"{_env('kafka_security_protocol')}={scheme}"
        out.append(f"the broker URL ({_env('broker_url')}) starts with kafka:// whatever the protocol: set {protocol}")
    if s.redis_ssl_ca_certs is not None and not s.redis_url.get_secret_value().startswith("rediss://"):
        out.append(
            f"a Redis CA ({_env('redis_ssl_ca_certs')}) needs a TLS Redis URL: rediss://[:password@]host:port/db"
        )
    if s.postgres_url is not None:
        out += _postgres_problems(s.postgres_url.get_secret_value())
    return out


def _postgres_problems(url: str) -> list[str]:
    """The URL asyncpg will be given: postgresql://user:password@host:port/database?sslmode=... (never echoed)."""
    name = f"the PostgreSQL URL ({_env('postgres_url')})"
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # several hosts (host1:5432,host2:5432) are asyncpg's to read
            _ = parts.port  # ValueError: a port that is not a number
        query = parse_qs(parts.query)
    except ValueError:
        return [f"{name} is not a URL: postgresql://user:password@host:port/database[?sslmode=verify-full]"]
    if parts.scheme not in ("postgresql", "postgres"):
        return [f"{name} must start with postgresql:// (or postgres://)"]
    modes = [mode for mode in query.get("sslmode", []) if mode not in SSLMODES]
    out = [f"{name} has sslmode={modes[0]!r}, not one of {', '.join(SSLMODES)}"] if modes else []
    # The pool connects lazily (a worker starts while PostgreSQL is down): a missing file would show only then.
    files = [f"{key}={path}" for key in ("sslrootcert", "sslcert", "sslkey") for path in query.get(key, [])]
    return out + [f"{name} names no such file: {file}" for file in files if not Path(file.partition("=")[2]).is_file()]
