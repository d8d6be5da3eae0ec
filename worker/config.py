"""The one configuration object: ``TAILOR_*`` environment variables over an optional file.

Every topic name, size, threshold and model knob lives here, frozen, so that a running
worker cannot drift from what it logged at start-up. A wrong value stops start-up with one
line that names the setting (see :class:`ConfigError`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from worker.contract.types import MAX_ID_LENGTH

__all__ = [
    "CONTROL_VARIANT",
    "ENV_PREFIX",
    "MAX_VARIANTS",
    "RECOMMENDER_PARTS",
    "VARIANT_SETTINGS",
    "ConfigError",
    "Settings",
    "Variant",
    "describe_error",
    "load_settings",
    "variant_overrides",
]

ENV_PREFIX = "TAILOR_"

#: Parts of the recommender that can be switched off, one at a time, to see what each adds.
RecommenderPart = Literal[
    "covis", "sessions", "taste", "trending", "segment", "content", "repeat", "ranker", "explore"
]
RECOMMENDER_PARTS: tuple[RecommenderPart, ...] = (
    "covis",
    "sessions",
    "taste",
    "trending",
    "segment",
    "content",
    "repeat",
    "ranker",
    "explore",
)


#: The settings a variant may override: list assembly only (candidates, ranking, filters,
#: diversity, exploration). The models are shared and learn from every event whatever
#: variant its user sees, so nothing that shapes learning or state is here.
VARIANT_SETTINGS: tuple[str, ...] = (
    "top_k",
    "parts_off",
    "explore_share",
    "max_per_category",
    "trending_pool",
    "taste_pool",
    "covis_per_anchor",
    "covis_recent",
    "covis_anchor_decay",
    "session_candidates",
    "just_bought_window_s",
)
#: The variant of every user the configured variants' shares leave over: the settings as
#: they are. A reserved name.
CONTROL_VARIANT = "control"
#: Variants are a metric label: a handful, never one per user.
MAX_VARIANTS = 8

VariantName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class Variant(BaseModel):
    """One named variant of ``TAILOR_VARIANTS``: a share of the users and what it changes.

    A published variant's ``share`` is its slice of the users (the slices of all published
    variants are laid end to end in the order listed, and what is left is
    :data:`CONTROL_VARIANT`). A shadow's ``share`` is the sample of users it is computed
    for, drawn apart from the published split: a shadow is computed and scored for them
    but never published, so it shows a change's quality without exposing anyone to it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    share: float = Field(ge=0, le=1, description="share of the users (see above)")
    shadow: bool = Field(False, description="computed and scored, never published")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the settings in VARIANT_SETTINGS, by lower-case name",
    )


class ConfigError(ValueError):
    """A setting is wrong or missing; the message names it as the operator would type it."""


class Settings(BaseSettings):
    """Everything a worker, the demo and the evaluation harness can be told."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True
    )

    # Kafka
    bootstrap_servers: str = Field("localhost:9092", min_length=1, description="Kafka brokers")
    events_topic: str = Field("tailor.events", min_length=1, description="interactions in")
    catalog_topic: str = Field(
        "tailor.catalog", min_length=1, description="compacted catalog: item features"
    )
    recommendations_topic: str = Field(
        "tailor.recommendations", min_length=1, description="refreshed lists out"
    )
    dlq_topic: str = Field(
        "tailor.events.dlq", min_length=1, description="malformed messages, with reason"
    )
    model_topic: str = Field(
        "tailor.model",
        min_length=1,
        description="model deltas every worker publishes and reads whole (one partition)",
    )
    group_id: str = Field("tailor", min_length=1, description="consumer group of the workers")
    client_id: str = Field("tailor-worker", min_length=1, description="Kafka and Redis client name")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="required with SASL_*"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_ca_location: Path | None = Field(None, description="CA bundle for SSL")
    kafka_ssl_certificate_location: Path | None = Field(None, description="client certificate")
    kafka_ssl_key_location: Path | None = Field(None, description="client private key")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="key password (secret)")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka settings passed through as they are"
    )

    # Topics: what `tailor topics create` makes and `--check` compares (the worker itself
    # creates none but the model topic, and only when it is missing)
    topic_partitions: int = Field(
        6,
        ge=1,
        le=10_000,
        description="partitions of the events and recommendations topics: the most workers "
        "that can share the load",
    )
    topic_replication: int | None = Field(
        None,
        ge=1,
        le=32,
        description="replicas of each topic created (unset: the broker's "
        "default.replication.factor)",
    )
    topic_retention_s: int = Field(
        7 * 86_400,
        ge=3600,
        description="how long the events and recommendations topics keep messages (the "
        "replay horizon)",
    )
    dlq_retention_s: int = Field(
        14 * 86_400, ge=3600, description="how long dead letters are kept for inspection"
    )

    # Micro-batching and delivery
    batch_size: int = Field(500, ge=1, le=100_000, description="max events per micro-batch")
    batch_wait_ms: int = Field(5, ge=0, le=10_000, description="max wait to fill a batch")
    blas_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="threads of the BLAS library (OpenBLAS) for the core's matrix products "
        "(0 = the library's default, one per core); one worker per core is the design, and "
        "threads spinning beside Kafka and Redis cost small batches more than they give",
    )
    commit_interval_ms: int = Field(
        1000, ge=10, le=60_000, description="background commit of acknowledged offsets"
    )
    max_message_bytes: int = Field(
        65_536, ge=256, le=10_485_760, description="larger events go to the DLQ as oversize"
    )
    max_future_skew_s: float = Field(600.0, ge=0, description="reject events this far ahead")
    min_event_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="reject events older than this (catches unset and epoch-seconds clocks)",
    )
    max_id_length: int = Field(
        MAX_ID_LENGTH,
        ge=8,
        le=MAX_ID_LENGTH,
        description=f"longest accepted id (the contract's ceiling is {MAX_ID_LENGTH})",
    )
    dedup_window: int = Field(
        50_000,
        ge=0,
        le=10_000_000,
        description="recent event ids remembered to dead-letter duplicates (~0.3 KB each; 0 = off)",
    )
    outage_timeout_s: float = Field(
        300.0, gt=0, description="stop (uncommitted) when Redis stays away this long"
    )
    catalog_load_timeout_s: float = Field(
        300.0,
        gt=0,
        description="at start, read the catalog topic to its end for at most this long before "
        "serving (a worker serving a half-read catalog lists from half the items)",
    )

    # Redis
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="redis://, rediss:// or unix://; redis+cluster:// or rediss+cluster:// "
        "for a Redis Cluster",
    )
    redis_cluster: bool = Field(
        False,
        description="use redis-py's cluster client (a +cluster URL scheme implies it); the URL "
        "names any one node",
    )
    redis_username: str | None = Field(None, description="Redis ACL user")
    redis_password: SecretStr | None = Field(None, description="Redis password (secret)")
    redis_ssl_ca_certs: Path | None = Field(
        None, description="CA bundle that signed the Redis server certificate (rediss://)"
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="client certificate for Redis TLS (rediss://, with the key)"
    )
    redis_ssl_keyfile: Path | None = Field(
        None, description="client private key for Redis TLS (rediss://, with the certificate)"
    )
    redis_key_prefix: str = Field(
        "tailor", min_length=1, max_length=32, pattern=r"^[\w.-]+$", description="key namespace"
    )
    redis_timeout_s: float = Field(2.0, gt=0, le=60, description="socket and connect timeout")
    redis_chunk_size: int = Field(1000, ge=1, le=100_000, description="commands per pipeline")
    user_ttl_s: int = Field(90 * 24 * 3600, ge=60, description="idle user state expires after")
    store_lists: bool = Field(
        True,
        description="keep each user's latest published list in Redis, beside their state and "
        "with its TTL, for `tailor serve` (zlib-compressed: about 0.75 KB a user at K=20, the "
        "state itself about 1.1 KB; off: serve has no lists)",
    )

    # Recommender
    top_k: int = Field(20, ge=1, le=500, description="items per published list")
    recent_window: int = Field(30, ge=1, le=1000, description="recent items kept per user")
    covis_neighbours: int = Field(
        256, ge=2, le=1000, description="top-M co-visitation per item (8 bytes per slot)"
    )
    content_neighbours: int = Field(
        10, ge=1, le=1000, description="top-M catalog-text neighbours kept per item"
    )
    covis_per_anchor: int = Field(
        20, ge=1, le=1000, description="co-visitation candidates taken per recent item"
    )
    covis_recent: int = Field(3, ge=1, le=100, description="recent items that pull neighbours")
    covis_anchor_decay: float = Field(
        0.3, gt=0, le=1, description="weight of each older anchor relative to the next newer"
    )
    covis_window: int = Field(
        20, ge=1, le=1000, description="recent items a new item is paired with (co-visits)"
    )
    covis_half_life_s: float = Field(
        365 * 24 * 3600.0, gt=0, description="event-time half-life of co-visit counts"
    )
    covis_session_gap_s: float = Field(
        3600.0, gt=0, description="co-visits only within a session: a longer gap starts anew"
    )
    sessions_kept: int = Field(
        131_072,
        ge=16,
        le=1 << 26,
        description="latest sessions the similar-sessions model keeps (rounded up to a power "
        "of two; ~220 bytes each)",
    )
    sessions_per_item: int = Field(
        64, ge=1, le=10_000, description="latest sessions indexed per item (4 bytes each)"
    )
    session_length: int = Field(
        50, ge=2, le=1000, description="distinct items kept per session (the first ones)"
    )
    session_current_items: int = Field(
        10, ge=1, le=100, description="the current session's latest items that find neighbours"
    )
    session_neighbours: int = Field(
        100, ge=1, le=10_000, description="most similar sessions whose items are candidates"
    )
    session_candidates: int = Field(
        50, ge=1, le=10_000, description="similar-sessions candidates per user"
    )
    session_half_life_s: float = Field(
        60 * 24 * 3600.0, gt=0, description="event-time half-life of a neighbour session's say"
    )
    vector_dim: int = Field(32, ge=2, le=512, description="taste vector dimensions")
    learning_rate: float = Field(0.05, gt=0, le=1, description="item vector (item2vec) step size")
    regularization: float = Field(0.002, ge=0, le=1, description="item vector L2")
    taste_window: int = Field(
        10, ge=1, le=1000, description="recent items a new item is paired with (taste vectors)"
    )
    taste_memory: float = Field(
        0.9, gt=0, lt=1, description="share of a user's taste vector kept at each event"
    )
    trending_half_life_s: float = Field(
        3 * 24 * 3600.0, gt=0, description="event-time half-life of popularity (trending)"
    )
    segment_half_life_events: int = Field(
        10_000, ge=10, description="events after which a segment's counts weigh half"
    )
    trending_pool: int = Field(100, ge=1, le=100_000, description="trending candidates per user")
    taste_pool: int = Field(2000, ge=0, le=1_000_000, description="items the taste search scans")
    explore_share: float = Field(0.02, ge=0, lt=1, description="share of slots that explore")
    max_per_category: int = Field(0, ge=0, description="0 = no diversity cap")
    just_bought_window_s: float = Field(
        3600.0,
        ge=0,
        description="hide items bought this recently: the basket just paid for (0 = off)",
    )
    deny_categories: list[str] = Field(
        default_factory=list, description="categories never recommended (JSON list)"
    )
    ranker_memory_users: int = Field(
        20_000,
        ge=0,
        description="users whose last candidates are kept for ranker training (~4.4 KB each)",
    )
    ranker_learning_rate: float = Field(
        0.05, gt=0, le=1, description="step size of the ranker's online updates"
    )
    ranker_negatives: int = Field(
        2, ge=1, le=100, description="passed-over candidates each chosen item is ranked above"
    )
    ranker_l2: float = Field(1e-4, ge=0, le=1, description="L2 pull of the ranker's weights")
    ranker_optimizer: Literal["sgd", "adagrad", "adam"] = Field(
        "adagrad", description="the ranker's River optimiser (AdaGrad: a step per feature)"
    )
    max_items: int = Field(
        1_000_000,
        ge=10,
        le=100_000_000,
        description="bound on items the models track (~2.3 KB each with the defaults)",
    )
    parts_off: list[RecommenderPart] = Field(
        default_factory=list,
        description="recommender parts switched off (JSON list; [] = all on; see evaluate "
        "--ablate)",
    )
    seed: int = Field(7, description="random seed: same seed, same lists")

    # Experiments (README "Experiments")
    variants: dict[VariantName, Variant] = Field(
        default_factory=dict,
        description="named variants of list assembly, JSON: {name: {share, shadow, settings}}; "
        "users outside every share see 'control' ({} = no experiment)",
    )
    variant_salt: str = Field(
        "tailor",
        min_length=1,
        max_length=64,
        description="salt of the user -> variant hash: a new salt reshuffles the users",
    )

    # Shared models (docs/models.md)
    model_sync: bool = Field(
        True,
        description="share model deltas with the other workers through the model topic and "
        "checkpoint them (off: each worker learns from its own partitions only and starts "
        "empty)",
    )
    model_sync_max_lag_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="a worker whose models lag the model topic longer than this reports "
        "not ready; evaluate --workers simulates this lag",
    )
    model_checkpoint_interval_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="seconds between model checkpoints (one worker writes each)",
    )
    model_checkpoints_kept: int = Field(
        2, ge=1, le=10, description="checkpoints kept in Redis (older ones are the fallback)"
    )

    # Live quality and bias (README "Live quality and bias")
    quality_segment: Literal["none", "device"] = Field(
        "device",
        description="context field that splits the live quality counters (label segment); "
        "none: one segment",
    )
    quality_segment_values: list[str] = Field(
        default_factory=lambda: ["desktop", "mobile", "tablet", "app", "web", "tv"],
        max_length=20,
        description="segment values kept as labels; any other is 'other', none 'unknown'",
    )
    quality_window_lists: int = Field(
        10_000,
        ge=1,
        description="a bias and coverage window closes after this many published lists",
    )
    quality_window_s: float = Field(
        300.0,
        gt=0,
        description="a bias and coverage window closes after this many seconds at the latest",
    )

    # Operations
    metrics_host: str = Field("0.0.0.0", description="address of /metrics, /healthz, /readyz")
    metrics_port: int = Field(9400, ge=0, le=65535, description="0 picks a free port")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    # Read path: `tailor serve` (README, "Read path: tailor serve")
    serve_host: str = Field("0.0.0.0", description="address `tailor serve` listens on")
    serve_port: int = Field(
        8080, ge=0, le=65535, description="port of `tailor serve` (API and /metrics); 0 = free"
    )
    serve_checkpoint_refresh_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="how often `tailor serve` looks for a newer model checkpoint for "
        "/v1/trending (every 2 s until it has one)",
    )

    def part_on(self, part: RecommenderPart) -> bool:
        return part not in self.parts_off

    @property
    def redis_is_cluster(self) -> bool:
        """True for a Redis Cluster: the setting, or a ``+cluster`` URL scheme."""
        return self.redis_cluster or _redis_scheme_of(self.redis_url).endswith("+cluster")

    @property
    def redis_tls(self) -> bool:
        """True when the Redis URL asks for TLS (``rediss://`` or ``rediss+cluster://``)."""
        return _redis_scheme_of(self.redis_url).startswith("rediss")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if _redis_scheme_of(value) not in _REDIS_SCHEMES:
            raise ValueError(
                "must start with redis://, rediss://, redis+cluster://, rediss+cluster:// or "
                "unix://"
            )
        return value

    @field_validator(
        "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location",
        "kafka_ssl_key_location",
        "redis_ssl_ca_certs",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
    )
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        """A missing certificate or key is named at start-up, not at the first TLS handshake,
        where the client library would report it far from the setting."""
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @field_validator("min_event_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone, for example 2000-01-01T00:00:00Z")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], not {server.strip()!r}")
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_MECHANISM is required when "
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL is {self.kafka_security_protocol}"
            )
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD are "
                "required for SASL"
            )
        return self

    @model_validator(mode="after")
    def _variants_are_list_settings(self) -> Settings:
        """A variant's overrides, checked as the settings themselves are, at start-up."""
        if not self.variants:
            return self
        name = f"{ENV_PREFIX}VARIANTS"
        if CONTROL_VARIANT in self.variants:
            raise ValueError(f"{name}: {CONTROL_VARIANT!r} is the default variant's name")
        if len(self.variants) > MAX_VARIANTS:
            raise ValueError(f"{name}: at most {MAX_VARIANTS} variants (a metric label)")
        shares = sum(v.share for v in self.variants.values() if not v.shadow)
        if shares > 1 + 1e-9:
            raise ValueError(f"{name}: the published variants' shares add up to {shares:g} > 1")
        kept = max(self.trending_pool, self.taste_pool)
        for variant_name, variant in self.variants.items():
            where = f"{name} variant {variant_name!r}"
            unknown = sorted(set(variant.settings) - set(VARIANT_SETTINGS))
            if unknown:
                raise ValueError(
                    f"{where}: {', '.join(unknown)} cannot differ by variant (only "
                    f"{', '.join(VARIANT_SETTINGS)})"
                )
            try:
                overrides = variant_overrides(variant)
            except ValidationError as error:
                problems = [
                    f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
                    f" (got {problem.get('input')!r})"
                    for problem in error.errors()
                ]
                raise ValueError(f"{where}: {'; '.join(problems)}") from None
            if "ranker" in overrides.get("parts_off", ()):
                raise ValueError(
                    f"{where}: parts_off: the ranker learns from every list, it cannot be "
                    "off for one variant"
                )
            for pool in ("trending_pool", "taste_pool"):
                if overrides.get(pool, 0) > kept:
                    raise ValueError(
                        f"{where}: {pool}: at most {kept}, what trending keeps "
                        "(the larger of TAILOR_TRENDING_POOL and TAILOR_TASTE_POOL)"
                    )
        return self

    @model_validator(mode="after")
    def _redis_tls_needs_rediss(self) -> Settings:
        """TLS files with a plaintext URL would be ignored silently: refuse them instead."""
        given = [
            f"{ENV_PREFIX}{name.upper()}"
            for name in ("redis_ssl_ca_certs", "redis_ssl_certfile", "redis_ssl_keyfile")
            if getattr(self, name) is not None
        ]
        if given and not self.redis_tls:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(
                f"{' and '.join(given)} {verb} a rediss:// {ENV_PREFIX}REDIS_URL "
                f"(got {_redis_scheme_of(self.redis_url)}://)"
            )
        if (self.redis_ssl_certfile is None) != (self.redis_ssl_keyfile is None):
            raise ValueError(
                f"{ENV_PREFIX}REDIS_SSL_CERTFILE and {ENV_PREFIX}REDIS_SSL_KEYFILE go together "
                "(for a PEM holding both, give the same file twice)"
            )
        return self

    @model_validator(mode="after")
    def _redis_cluster_needs_tcp_and_db_0(self) -> Settings:
        """What redis-py's cluster client would refuse only when it first connects (or, for
        a database number, silently at odds with the URL), refused at start-up instead."""
        if not self.redis_is_cluster:
            return self
        scheme = _redis_scheme_of(self.redis_url)
        if scheme == "unix":
            raise ValueError(
                f"{ENV_PREFIX}REDIS_CLUSTER needs a redis:// or rediss:// "
                f"{ENV_PREFIX}REDIS_URL (got unix://: a cluster is reached over TCP)"
            )
        path = urlsplit(self.redis_url).path.strip("/")
        if path not in ("", "0"):
            raise ValueError(
                f"{ENV_PREFIX}REDIS_URL names database {path!r}, but a Redis Cluster has only "
                f"database 0 ({ENV_PREFIX}REDIS_CLUSTER or a +cluster scheme is set)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments, then the environment, then the config file, then defaults."""
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            YamlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    def in_namespace(self, suffix: str, **changes: Any) -> Settings:
        """A copy on topics, group and Redis keys of its own (benchmarks, tests)."""
        head = self.redis_key_prefix[: max(0, 31 - len(suffix))]
        return self.with_overrides(
            events_topic=f"{self.events_topic}.{suffix}",
            catalog_topic=f"{self.catalog_topic}.{suffix}",
            recommendations_topic=f"{self.recommendations_topic}.{suffix}",
            dlq_topic=f"{self.dlq_topic}.{suffix}",
            model_topic=f"{self.model_topic}.{suffix}",
            group_id=f"{self.group_id}-{suffix}",
            redis_key_prefix=f"{head}-{suffix}"[-32:],
            **changes,
        )

    def as_environment(self) -> dict[str, str]:
        """These settings as the ``TAILOR_*`` variables that give them back to a new process.

        Unset (None) settings are left out, lists and dicts are JSON, secrets are revealed:
        the result is meant for a child process's environment, never for a log.
        """
        environment: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, dict | list):
                text = json.dumps(value)
            else:
                text = str(value)
            environment[f"{ENV_PREFIX}{name.upper()}"] = text
        return environment

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy; the demo and tests use it to point at their own servers."""
        return type(self).model_validate({**self.model_dump(), **changes})


_VariantOverrides = create_model(  # the whitelisted fields, validated as Settings does
    "VariantOverrides",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{
        name: (Settings.model_fields[name].annotation, Settings.model_fields[name])
        for name in VARIANT_SETTINGS
    },  # type: ignore[call-overload]
)


def variant_overrides(variant: Variant) -> dict[str, Any]:
    """A variant's overrides, validated as the settings are (a bad one raises
    :class:`~pydantic.ValidationError`), by setting name."""
    return _VariantOverrides.model_validate(variant.settings).model_dump(exclude_unset=True)


_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")


def _redis_scheme_of(url: str) -> str:
    """The scheme of a Redis URL, without ``://`` (as redis-py reads it: case matters)."""
    return url.partition("://")[0]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise :class:`ConfigError` naming the first bad setting."""
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        key = {".toml": "toml_file", ".yaml": "yaml_file", ".yml": "yaml_file"}.get(
            config_file.suffix.lower()
        )
        if key is None:
            raise ConfigError(f"--config {config_file}: use a .toml, .yaml or .yml file")
        config = {**Settings.model_config, key: config_file}
        settings_cls = type("FileSettings", (Settings,), {"model_config": config})
    try:
        return settings_cls(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_error(error)) from None


def describe_error(error: ValidationError) -> str:
    """One line per problem: the environment variable, the field and what is wrong."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        field = location[0] if location else ""
        message = problem["msg"].removeprefix("Value error, ")
        if field:
            given = problem.get("input")
            shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
            lines.append(f"{ENV_PREFIX}{field.upper()} ({'.'.join(location)}): {message}{shown}")
        else:
            lines.append(f"settings: {message}")
    return "invalid setting: " + "; ".join(lines)
