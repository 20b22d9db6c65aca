"""One frozen settings object, built once (``Settings()``) and passed down.

Every field reads the environment variable ``TOCSIN_<FIELD>`` (for example
``TOCSIN_KAFKA_BOOTSTRAP``); nothing else in tocsin reads ``os.environ``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "tocsin"


_PATTERNS = {
    "broker_heap": (r"[1-9][0-9]*[kKmMgG]?", "a JVM heap size such as 768m or 2g"),
    "topic_prefix": (r"[A-Za-z0-9._-]{1,100}", "1-100 of [A-Za-z0-9._-] (Kafka's topic names)"),
    # CAP 1.2: the sender "MUST NOT include spaces, commas or restricted characters (< and
    # &)"; references are sender,identifier,sent triples, and one with a comma broke them
    "cap_sender": (r"[^\s,<&]{1,200}", "a CAP sender: no spaces, commas, < or &"),
}


def longest_declare_lag_s() -> float:
    """The longest any of the detectors, with their default parameters, declares a
    detection after its onset (see ``declare_lag_s`` of their parameters)."""
    from detectors.pressure import LambParams
    from detectors.sealevel import SeaLevelParams

    return max(LambParams().declare_lag_s, SeaLevelParams().declare_lag_s)


class Settings(BaseSettings):
    # no inf or nan in any number: "inf" seconds or megabytes passed and failed later
    model_config = SettingsConfigDict(env_prefix="TOCSIN_", frozen=True, extra="ignore",
                                      allow_inf_nan=False)

    home: Path = Field(
        default_factory=_default_home,
        description="TOCSIN_HOME: state (broker data and log, the default SQLite database, "
        "run folders, reports).",
    )
    cache_dir: Path = Field(
        default_factory=_default_home,
        description="TOCSIN_CACHE_DIR: downloaded and generated artefacts that can be reused "
        "(the Kafka jars, built-in replay packages).",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        description="TOCSIN_KAFKA_BOOTSTRAP: an existing Kafka cluster (host:port,...). When "
        "set, tocsin starts no broker of its own.",
    )
    kafka_version: str = Field(default="4.1.0", description="TOCSIN_KAFKA_VERSION")
    broker_port: int = Field(default=19092, ge=1, le=65535,
                             description="TOCSIN_BROKER_PORT: client listener")
    controller_port: int = Field(default=19093, ge=1, le=65535,
                                 description="TOCSIN_CONTROLLER_PORT: KRaft")
    broker_home: Path | None = Field(
        default=None,
        description="TOCSIN_BROKER_HOME: the broker's folder (config, pid, log, data in "
        "data/); default HOME/broker",
    )
    broker_heap: str = Field(default="768m", description="TOCSIN_BROKER_HEAP: java -Xmx")
    broker_jit: Literal["c1", "tiered"] = Field(
        default="c1",
        description="TOCSIN_BROKER_JIT: 'c1' compiles the local broker with the JVM's client "
        "compiler only (steady from its first replay; on a machine whose cores it shares with "
        "the workers); 'tiered', the JVM's default, for a broker with cores of its own",
    )
    broker_log_mb: float = Field(
        default=50.0, gt=0,
        description="TOCSIN_BROKER_LOG_MB: the local broker's log rolls over at this size",
    )
    broker_log_files: int = Field(
        default=5, ge=1,
        description="TOCSIN_BROKER_LOG_FILES: rolled-over broker logs kept (broker.log.1 the "
        "newest); each start of the broker also rolls the log over",
    )
    topic_prefix: str = Field(default="tocsin", description="TOCSIN_TOPIC_PREFIX")
    partitions: int = Field(
        default=4, ge=1, description="TOCSIN_PARTITIONS: partitions of the observations topic"
    )
    replication: int = Field(default=1, ge=1, description="TOCSIN_REPLICATION: topic replication")
    database_url: str | None = Field(
        default=None,
        description="TOCSIN_DATABASE_URL: SQLAlchemy URL; default sqlite:///HOME/tocsin.db",
    )
    http_host: str = Field(default="127.0.0.1", description="TOCSIN_HTTP_HOST: dashboard bind")
    http_port: int = Field(default=8000, ge=1, le=65535,
                           description="TOCSIN_HTTP_PORT: dashboard port")
    public_url: str = Field(
        default="", description="TOCSIN_PUBLIC_URL: the dashboard's address as its users "
        "reach it (behind a proxy), for the links of the Atom feed; empty: links relative "
        "to the feed (the bind address, 0.0.0.0 or ::, is nobody's address)")
    packet_seconds: float = Field(
        default=600.0,
        gt=0,
        description="TOCSIN_PACKET_SECONDS: event-time length of one observation packet "
        "(packets, never single samples, go through Kafka)",
    )
    observations_retention_s: float = Field(
        default=35 * 86400.0, ge=3600.0,
        description="TOCSIN_OBSERVATIONS_RETENTION_S: how long the observations topic keeps "
        "its records (retention.ms, set when tocsin creates it). A worker taking stations "
        "over rebuilds their detectors from them: the tide detector's harmonic fit needs "
        "32 days",
    )
    station_registry: Path | None = Field(
        default=None,
        description="TOCSIN_STATION_REGISTRY: CSV (stations.csv header) of extra coastal gauges "
        "and DARTs that get ETA forecasts in live use",
    )
    # from Kafka's group.min.session.timeout.ms (6 s: less and the broker refuses the
    # worker's join) to Faust's request timeout (90 s: more and Faust refused to make the
    # consumer, after the settings had taken it)
    session_timeout_ms: int = Field(
        default=10000, ge=6000, le=90000,
        description="TOCSIN_SESSION_TIMEOUT_MS: consumer group session timeout"
    )

    api_tokens: str = Field(
        default="",
        description="TOCSIN_API_TOKENS: comma-separated tokens allowed to manage "
        "subscriptions (compared as SHA-256 hashes, never logged); empty: management closed",
    )
    webhook_allowed_hosts: str = Field(
        default="",
        description="TOCSIN_WEBHOOK_ALLOWED_HOSTS: comma-separated host names webhooks may "
        "target; empty: any host that is not link-local, metadata, multicast or unspecified",
    )
    webhook_allow_link_local: bool = Field(
        default=False,
        description="TOCSIN_WEBHOOK_ALLOW_LINK_LOCAL: allow link-local and cloud-metadata "
        "webhook targets (169.254.0.0/16, fe80::/10)",
    )
    delivery_max_attempts: int = Field(
        default=20, ge=1, description="TOCSIN_DELIVERY_MAX_ATTEMPTS: then dead-lettered (with "
        "the default backoff, 20 attempts retry for about an hour: 8 gave up after 2 min)"
    )
    delivery_backoff_s: float = Field(
        default=1.0, gt=0, description="TOCSIN_DELIVERY_BACKOFF_S: first retry delay, doubled "
        "each attempt"
    )
    delivery_backoff_max_s: float = Field(
        default=300.0, gt=0, description="TOCSIN_DELIVERY_BACKOFF_MAX_S: longest retry delay"
    )
    ingest_watermark_lag_s: float = Field(
        default=600.0, ge=0, description="TOCSIN_INGEST_WATERMARK_LAG_S: how far behind the "
        "newest record's end a live ingest's watermarks run; a station's records later than "
        "that behind it are associated late. After that long with no record, the marks "
        "follow the clock, less the lag"
    )
    association_lateness_s: float = Field(
        default=24 * 3600.0, ge=0, description="TOCSIN_ASSOCIATION_LATENESS_S: how far in "
        "declared time a detection may come behind the newest and still be associated in its "
        "place (the associator re-runs what came after it)"
    )
    association_onset_lag_s: float = Field(
        default=12 * 3600.0, ge=0, description="TOCSIN_ASSOCIATION_ONSET_LAG_S: how long "
        "before its declaration a detection's onset may be"
    )
    smtp_host: str = Field(default="127.0.0.1", description="TOCSIN_SMTP_HOST")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="TOCSIN_SMTP_PORT")
    smtp_from: str = Field(default="tocsin@localhost", description="TOCSIN_SMTP_FROM")
    cap_sender: str = Field(default="tocsin@localhost", description="TOCSIN_CAP_SENDER")
    cap_status: Literal["Actual", "Exercise", "Test"] = Field(
        default="Actual", description="TOCSIN_CAP_STATUS: the CAP status of the workers' "
        "alerts; replays run theirs as Exercise, delivered only to subscriptions that take "
        "exercises")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^\s/?#\"<>]+(/[^\s?#\"<>]*)?", v):
            raise ValueError(f"{v!r} is not an http(s) URL with no query or fragment")
        return v.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        # checked here: "bogus" went on to a traceback from the first command that stored
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if v is not None:
            try:
                make_url(v)
            except ArgumentError:
                # the value is not repeated: it may hold a password
                raise ValueError("not a database URL (e.g. postgresql+psycopg://user@host/db "
                                 "or sqlite:///path)") from None
        return v

    @field_validator("broker_heap", "topic_prefix", "cap_sender")
    @classmethod
    def _pattern(cls, v: str, info: ValidationInfo) -> str:
        # checked here, not when the first topic is named or by the JVM after the Maven
        # fetch (" 768m" went through as "-Xmx 768m")
        pattern, what = _PATTERNS[str(info.field_name)]
        if not re.fullmatch(pattern, v):
            raise ValueError(f"{v!r} is not {what}")
        return v

    @field_validator("association_onset_lag_s")
    @classmethod
    def _onset_lag(cls, v: float) -> float:
        # the detectors declare up to hours after an onset (a tsunami's final amplitude):
        # with less, every such detection was refused as late and nothing was associated
        need = longest_declare_lag_s()
        if v < need:
            raise ValueError(f"below {need:g} s, the longest a detector declares a detection "
                             "after its onset (a tsunami's final amplitude): each would be "
                             "refused as late and never associated")
        return v

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.kafka_bootstrap is None and self.broker_port == self.controller_port:
            raise ValueError(f"TOCSIN_BROKER_PORT and TOCSIN_CONTROLLER_PORT are both "
                             f"{self.broker_port}: the broker needs two ports")
        return self

    @property
    def broker_dir(self) -> Path:
        return self.broker_home or self.home / "broker"

    @property
    def kafka_libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tocsin.db'}"
