"""The one settings model: every tunable is an environment variable prefixed SEQGUARD_.

Defaults are valid for real Apache Kafka (sessions >= 6 s, replication 3 in production
is set through SEQGUARD_REPLICATION_FACTOR). The README's table is generated from this
model (``seqguard config --markdown``) and a test checks they agree.

Commands build it with ``load_settings()``: a ``.env`` file in the working directory is read
(the environment wins), durations take units (``24h``), choices any case (``INFO``), and an
unknown ``SEQGUARD_*`` name or a bad value is a ``SettingsError`` of one line (the CLI exits 2).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tables.policy import GapPolicy, Ordering, OverflowPolicy, StartPolicy
from workers import settings_load
from workers.settings_load import SettingsError as SettingsError  # raised by load_settings
from workers.settings_types import Duration, Millis, fold_choice, literal_choices

ENV_PREFIX = "SEQGUARD_"
ENV_FILE = ".env"

#: SEQGUARD_ variables that are not settings and are read outside the model on purpose; the
#: unknown-name check lets them through (workers inherit the test runner's environment).
READ_ELSEWHERE = frozenset(
    {
        "SEQGUARD_CHAOS",  # tests/integration/test_chaos.py: which chaos run (short, long, calm...)
        "SEQGUARD_CHAOS_SEED",  # tests/integration/test_chaos.py: replays a run's input and choices
        "SEQGUARD_TEST_SPOOL",  # tests/integration/*_domain.py: the test domains' effect spool file
    }
)


class Settings(BaseSettings):
    # The environment wins over .env (pydantic-settings' order); other names in .env are ignored.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # a bad value must not print the passwords beside it
    )

    # --- where ---
    broker_url: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap servers (kafka://host:port[;host:port])"
    )
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="Redis for once-only side effects")
    redis_prefix: str = Field("seqguard:", description="Prefix of every Redis key seqguard writes")
    redis_connect_timeout: Duration = Field(
        2.0, gt=0, description="Seconds to connect to Redis before it counts as down"
    )
    redis_socket_timeout: Duration = Field(
        2.0, gt=0, description="Seconds a Redis command may take before it counts as down (a hung Redis)"
    )
    redis_retries: int = Field(2, ge=0, description="Quick retries of a Redis command on a dropped connection")
    redis_health_check_interval: Duration = Field(
        10.0, ge=0, description="Seconds idle before a pooled Redis connection is checked with PING (0: never)"
    )
    postgres_url: SecretStr | None = Field(
        None, description="PostgreSQL for exactly-once projections (ctx.project); unset: no projections"
    )
    postgres_pool_max: int = Field(4, ge=1, description="Most PostgreSQL connections per worker")
    postgres_timeout: Duration = Field(5.0, gt=0, description="Seconds to connect to PostgreSQL, and per statement")
    app_id: str = Field("seqguard", description="Faust app id: consumer group and changelog topic prefix")
    worker_id: str = Field("", description="Worker identity written into DLQ headers (default: host:pid)")

    # --- topics ---
    input_topic: str = Field("seqguard.events", description="Ordered input topic (CloudEvents, keyed by aggregate ID)")
    output_topic: str = Field("seqguard.applied", description="Applied events, in applied order per aggregate")
    dlq_topic: str = Field("", description="Dead-letter topic (default: <input_topic>.dlq)")
    audit_topic: str = Field("seqguard.audit", description="Operator actions and gap records")
    control_topic_name: str = Field(
        "",
        description="Operator control topic, co-partitioned with the input; grant writes to operators only "
        "(default: <input_topic>.control)",
    )
    partitions: int = Field(
        8, ge=1, le=1024, description="Partitions of input, repartition, output and changelog topics"
    )
    replication_factor: int = Field(
        1, ge=1, description="Replication of topics seqguard creates, changelogs included (3 in production)"
    )
    create_topics: bool = Field(True, description="Create missing topics at start-up with explicit partition counts")

    # --- ordering ---
    policy_file: Path | None = Field(
        None, description="JSON/TOML file: event type -> ordering, gap_timeout, gap_policy, auto_replay"
    )
    default_ordering: Ordering = Field("ordered", description="Ordering policy for types the policy file does not name")
    gap_timeout: Duration = Field(30.0, gt=0, description="Seconds a gap may stay open before the gap policy acts")
    gap_policy: GapPolicy = Field(
        "skip", description="skip: record the gap and go on; park: hold the aggregate for an operator"
    )
    start_policy: StartPolicy = Field(
        "from_one", description="First event of an unknown aggregate: wait for sequence 1, or start where it starts"
    )
    max_buffered_per_aggregate: int = Field(1_000, ge=1, description="Reorder buffer limit per aggregate")
    max_buffered_per_partition: int = Field(100_000, ge=1, description="Reorder buffer limit per source partition")
    overflow_policy: OverflowPolicy = Field(
        "dead_letter", description="When a buffer is full: dead_letter the event, or skip_gap at once"
    )
    max_sequence: int = Field(2**53, ge=1, description="Sequence numbers above this are rejected as absurd")
    state_ttl: Duration = Field(
        86_400.0, gt=0, description="Seconds of aggregate inactivity after which its state is forgotten"
    )
    max_seen_ids: int = Field(1_000, ge=1, description="Seen event IDs kept per aggregate (besides the TTL)")
    max_state_record_bytes: int = Field(
        900_000,
        ge=10_000,
        description="Largest changelog record: a reorder buffer or seen-ID set past it overflows or is trimmed",
    )
    derive_missing_ids: bool = Field(
        True, description="An event without an id gets SHA-256 of its canonical data (false: dead-letter it)"
    )
    max_event_bytes: int = Field(
        256_000,
        ge=1,
        description="Larger input records are dead-lettered (a buffered event must fit a changelog record)",
    )

    # --- handlers and retries ---
    handler_attempts: int = Field(
        3, ge=1, description="Attempts of a failing handler before its event is dead-lettered"
    )
    retry_base_delay: Duration = Field(0.1, ge=0, description="First retry delay in seconds (doubles each attempt)")
    retry_max_delay: Duration = Field(2.0, ge=0, description="Retry delay ceiling in seconds")
    handler_timeout: Duration = Field(10.0, gt=0, description="Default per-event handler time limit in seconds")
    domains: str = Field(
        "workers.domains.orders,workers.domains.builds",
        description="Comma-separated modules whose handlers are registered",
    )

    # --- outages and the effect ledger ---
    outage_retry_max_delay: Duration = Field(
        5.0, gt=0, description="Retry delay ceiling in seconds while an event waits for an unavailable dependency"
    )
    effect_ttl: Duration = Field(
        86_400.0, gt=0, description="Seconds an effect stays done in the ledger (Redis and PostgreSQL rows)"
    )
    effect_lease: Duration = Field(
        60.0, gt=0, description="Seconds a claim on an effect holds before another delivery may take it over"
    )
    ledger_namespace: str = Field(
        "", description="Key namespace of the effect ledger; apps sharing one run shared effects once (default: prefix)"
    )
    ledger_outage: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="Ledger unreachable: fail_closed waits for it, fail_open runs effects unguarded (counted, logged)",
    )
    domain_state_ttl: Duration = Field(
        30 * 86_400.0, gt=0, description="Seconds the reference domains keep an idle aggregate's Redis state and outbox"
    )
    postgres_prune_interval: Duration = Field(
        600.0, gt=0, description="Seconds between deletions of PostgreSQL idempotency rows older than the effect TTL"
    )

    # --- DLQ and replay ---
    max_replays: int = Field(3, ge=0, description="Replays of one record before it is left for an operator")
    replay_rate: float = Field(0.0, ge=0, description="Replay rate limit in records/s (0: unlimited)")
    error_message_max: int = Field(1_000, ge=16, description="Longest error message kept in a DLQ header")
    dlq_auto_replay: str = Field(
        "", description="Error classes the DLQ agent replays by itself (comma-separated); empty: report only"
    )
    dlq_agent_interval: Duration = Field(30.0, gt=0, description="Seconds between DLQ agent passes")
    operator: str = Field(
        "", description="Operator name recorded in audit records of operator commands (or their --operator)"
    )

    # --- batching and latency ---
    batch_max: int = Field(
        5_000, ge=1, description="Most events per batch (more: fewer changelog writes, longer batches)"
    )
    fetch_max_wait_ms: Millis = Field(
        100,
        ge=0,
        description="Consumer fetch wait; Faust fixes 1500 ms (lower: less latency on brokers that hold a waiting "
        "fetch to its end, more idle fetches)",
    )
    fetch_ahead: bool = Field(
        False,
        description="Fetch the next records while a batch is processed (aiokafka's prefetch): a record then "
        "waits one to two batch cycles; off, the worker fetches when it wants records, one round trip",
    )
    producer_linger_ms: Millis = Field(5, ge=0, description="Producer linger in milliseconds")
    probe_changelog_ends: bool = Field(
        True,
        description="Recover tables up to a fetch's high-water mark (Tansu's ListOffsets is a batch short)",
    )
    gap_check_interval: Duration = Field(1.0, gt=0, description="Seconds between gap-timeout and TTL sweeps")

    # --- Kafka client (Faust) ---
    session_timeout: Duration = Field(30.0, gt=0, description="Consumer session timeout in seconds (Kafka refuses < 6)")
    heartbeat_interval: Duration = Field(3.0, gt=0, description="Consumer heartbeat interval in seconds")
    rebalance_timeout: Duration = Field(60.0, gt=0, description="Rebalance timeout in seconds")
    commit_interval: Duration = Field(2.8, gt=0, description="Seconds between offset commits")
    startup_timeout: Duration = Field(
        15.0, gt=0, description="Seconds to reach the broker at start-up before exiting non-zero"
    )
    standby_replicas: int = Field(1, ge=0, description="Faust table standby replicas")

    # --- security (connections to Kafka, Redis, PostgreSQL; checked by workers/kafka/clients.py) ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol of every client (Faust's and seqguard's own)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism (required with SASL_PLAINTEXT and SASL_SSL)"
    )
    kafka_sasl_username: str = Field("", description="SASL username (PLAIN, SCRAM); an API key on Confluent Cloud")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (PLAIN, SCRAM); never printed")
    kafka_sasl_oauth_token_provider: str = Field(
        "",
        description="OAUTHBEARER: module:attribute of an aiokafka AbstractTokenProvider (instance, class or factory)",
    )
    kafka_ssl_cafile: FilePath | None = Field(
        None, description="PEM CA bundle the brokers' certificates are checked against (default: the system's)"
    )
    kafka_ssl_certfile: FilePath | None = Field(None, description="PEM client certificate (mutual TLS)")
    kafka_ssl_keyfile: FilePath | None = Field(None, description="PEM private key of the client certificate")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted key file")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to (false: only its CA)"
    )
    redis_ssl_ca_certs: FilePath | None = Field(
        None, description="PEM CA bundle for a rediss:// Redis URL (default: the system's)"
    )

    @model_validator(mode="after")
    def _connections_fit_together(self) -> Settings:
        """Security combinations that cannot work (a mechanism without SASL...), all in one message."""
        from workers.kafka.clients import settings_problems  # that module imports this one

        problems = settings_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def redis_ssl_options(self) -> dict[str, Any]:
        """TLS keyword arguments of ``Redis.from_url`` (a plain redis:// connection takes none)."""
        return {"ssl_ca_certs": str(self.redis_ssl_ca_certs)} if self.redis_ssl_ca_certs else {}

    # --- end of security ---

    # --- process ---
    web_port: int = Field(6066, ge=0, le=65535, description="Faust web port: /metrics and /healthz (0: no web server)")
    web_host: str = Field("0.0.0.0", description="Faust web bind host")  # noqa: S104
    web_url: str = Field(
        "",
        description="URL the CLI and other workers reach this worker's web pages at, advertised to the group "
        "(default: http://<web_host>:<web_port>, the hostname for web_host 0.0.0.0)",
    )
    worker_url: str = Field(
        "",
        description="Worker the gaps, aggregate and verify commands ask first (default: http://localhost:<web_port>)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["json", "console"] = Field(
        "json", description="Log lines: json (one object per line, for containers) or console (for people)"
    )
    state_dump: bool = Field(False, description="Serve every table's content at /tables (tests, debugging)")
    metrics: bool = Field(
        True, description="Count Prometheus metrics (false: /metrics is empty; for measuring their cost)"
    )
    data_dir: Path = Field(Path("./data"), description="Faust data directory")
    store: Literal["memory", "rocksdb"] = Field(
        "memory",
        description="State table store: memory (every start reads the whole changelog) or rocksdb (a checkpoint "
        "per worker in <data_dir>/<app_id>/id-<worker_id>, else .../port-<web_port>: a restart reads only the "
        "changelog written since)",
    )
    state_cache: int = Field(
        20_000,
        ge=0,
        description="Aggregates kept decoded between batches, most recently used (0: decode at every batch; "
        "about 1-4 KB each)",
    )

    # --- DLQ agent chunks and topic retention (issue 11; workers/dlq/agent.py, workers/kafka/topics.py) ---
    dlq_agent_chunk: int = Field(
        1_000,
        ge=1,
        description="Records the DLQ agent republishes, audits and marks at a time (SIGTERM finishes the chunk "
        "in flight; with SEQGUARD_REPLAY_RATE, at most 5 s of records)",
    )
    dlq_retention: Duration = Field(
        -1.0,
        description="Seconds the DLQ topic keeps records, set when seqguard creates it (-1: no time limit; "
        "a record is the only copy of its failed event until replayed or resolved)",
    )
    audit_retention: Duration = Field(
        90 * 86_400.0,
        description="Seconds the audit topic keeps records, set when seqguard creates it (-1: no time limit)",
    )

    @field_validator("dlq_retention", "audit_retention")
    @classmethod
    def _retention_is_a_time_or_none(cls, value: float) -> float:
        if value != -1 and value < 0.001:  # Kafka's retention.ms: -1 or at least 1 ms
            raise ValueError("a retention is -1 (no time limit) or seconds, at least 0.001")
        return value

    # --- end of DLQ agent chunks and topic retention ---

    @field_validator("*", mode="before")
    @classmethod
    def _choices_in_any_case(cls, value: Any, info: ValidationInfo) -> Any:
        """Every Literal field, present and future, takes its choices in any case, kept as spelled here."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or field.annotation is None:
            return value
        return fold_choice(value, literal_choices(field.annotation))

    @property
    def advertised_url(self) -> str:
        """``web_url``, or one derived from the bind host and port (Faust's ``canonical_url``)."""
        if self.web_url:
            return self.web_url.rstrip("/")
        host = self.web_host if self.web_host not in ("", "0.0.0.0", "::") else socket.gethostname()  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.web_port or 6066}"

    @property
    def ledger_prefix(self) -> str:
        return self.ledger_namespace or self.redis_prefix

    @property
    def dlq(self) -> str:
        return self.dlq_topic or f"{self.input_topic}.dlq"

    @property
    def control_topic(self) -> str:
        """Operator commands (``aggregates resolve``): the only topic the worker takes them from."""
        return self.control_topic_name or f"{self.input_topic}.control"

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-{self.input_topic}-repartition"

    def changelog_topic(self, table: str) -> str:
        return f"{self.app_id}-{table}-changelog"

    @property
    def markers_topic(self) -> str:
        """The DLQ's compacted "already replayed" markers."""
        return f"{self.dlq}.replayed"

    @property
    def assignor_leader_topic(self) -> str:
        """Faust's leader-election topic (one partition, as Faust itself declares it)."""
        return f"{self.app_id}-__assignor-__leader"

    @property
    def auto_replay_classes(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.dlq_auto_replay.split(",") if c.strip())

    @property
    def bootstrap_servers(self) -> str:
        """``kafka://a:1;b:2`` -> ``a:1,b:2`` for plain aiokafka clients."""
        hosts = self.broker_url.replace("kafka://", "").replace(";", ",")
        return ",".join(h.strip() for h in hosts.split(",") if h.strip())


def env_names() -> frozenset[str]:
    """Every setting's variable name: SEQGUARD_<FIELD>."""
    return settings_load.env_names(Settings)


def explain(exc: ValidationError) -> list[str]:
    """``invalid setting SEQGUARD_<NAME>='value': why`` per bad field (secrets masked)."""
    return settings_load.explain(Settings, exc)


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment and ./.env, or a SettingsError of one line (unknown
    SEQGUARD_ names, with the closest setting's, and every invalid value)."""
    return settings_load.load(Settings, READ_ELSEWHERE, overrides)
