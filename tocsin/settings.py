"""One frozen settings object, built once (``Settings()``) and passed down.

Every field reads the environment variable ``TOCSIN_<FIELD>`` (for example
``TOCSIN_KAFKA_BOOTSTRAP``); nothing else in tocsin reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "tocsin"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOCSIN_", frozen=True, extra="ignore")

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
    broker_port: int = Field(default=19092, description="TOCSIN_BROKER_PORT: client listener")
    controller_port: int = Field(default=19093, description="TOCSIN_CONTROLLER_PORT: KRaft")
    broker_home: Path | None = Field(
        default=None,
        description="TOCSIN_BROKER_HOME: the broker's folder (config, pid, log, data in "
        "data/); default HOME/broker",
    )
    broker_heap: str = Field(default="768m", description="TOCSIN_BROKER_HEAP: java -Xmx")
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
    http_port: int = Field(default=8000, description="TOCSIN_HTTP_PORT: dashboard port")
    packet_seconds: float = Field(
        default=600.0,
        gt=0,
        description="TOCSIN_PACKET_SECONDS: event-time length of one observation packet "
        "(packets, never single samples, go through Kafka)",
    )
    station_registry: Path | None = Field(
        default=None,
        description="TOCSIN_STATION_REGISTRY: CSV (stations.csv header) of extra coastal gauges "
        "and DARTs that get ETA forecasts in live use",
    )
    session_timeout_ms: int = Field(
        default=10000, description="TOCSIN_SESSION_TIMEOUT_MS: consumer group session timeout"
    )

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
