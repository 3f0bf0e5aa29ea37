"""Typed configuration: environment variables with the KUBEVENTS_ prefix and an optional YAML file.

One nested object per concern. ``KUBEVENTS_KAFKA_BROKERS`` sets ``kafka.brokers``: the first ``_``
after the prefix separates the section from the field (``env_nested_max_split=1``), so field names
keep their own underscores. Precedence: explicit arguments > environment > YAML file > defaults.
"""

from __future__ import annotations

import os
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# Comma-separated in the environment (a,b,c), a list in YAML.
CsvList = Annotated[list[str], NoDecode]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]


def _pod_namespace() -> str | None:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else None


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ClusterSettings(BaseModel):
    name: str = Field("default", description="Cluster name stamped on every event.")


class KafkaSettings(BaseModel):
    brokers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Path | None = Field(None, description="Client key (mutual TLS).")
    ssl_insecure_skip_verify: bool = Field(
        False, description="Skip broker certificate and hostname checks. Only for testing."
    )
    compression: Compression = Field("lz4", description="Producer compression codec.")
    compression_level: int | None = Field(
        None,
        ge=1,
        le=22,
        description="Codec level: lz4 1-12 (default 1, fast, as librdkafka and Go clients use;"
        " aiokafka's own 9 costs 15x the CPU for ~1.6x smaller batches), gzip 1-9 (default 9),"
        " zstd 1-22 (default 3).",
    )
    linger_ms: int = Field(20, ge=0, description="Producer batching delay, milliseconds.")
    max_batch_bytes: int = Field(1 << 20, ge=1024, description="Producer batch size, bytes.")
    request_timeout_ms: int = Field(30_000, ge=1000, description="Broker request timeout, ms.")
    max_in_flight_events: int = Field(
        5000,
        ge=1,
        description="Events handed to the Kafka producer and not yet acknowledged. When reached,"
        " the producer stops reading the API server: memory stays bounded while Kafka is away.",
    )

    @field_validator("sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # KUBEVENTS_KAFKA_SSL_CAFILE= (empty) means "not set", not Path("") (the current dir).
        return None if value == "" else value

    @property
    def bootstrap_servers(self) -> list[str]:
        return [b.strip() for b in self.brokers.split(",") if b.strip()]


class TopicSettings(BaseModel):
    raw: str = Field("k8s-events-raw", description="What the producer saw.")
    enriched: str = Field("k8s-events", description="Deduplicated, enriched events (public).")
    dlq: str = Field("k8s-events-dlq", description="Records that could not be decoded.")
    partitions: int = Field(6, ge=1, description="Partitions when kubevents creates a topic.")
    replication_factor: int = Field(1, ge=1, description="Replication when kubevents creates it.")


class KubernetesSettings(BaseModel):
    kubeconfig: Path | None = Field(
        None, description="Path to a kubeconfig; default: in-cluster, then $KUBECONFIG/~/.kube."
    )
    context: str | None = None
    qps: float = Field(20.0, gt=0, description="Client-side API request rate, requests/s.")
    burst: int = Field(40, ge=1, description="Client-side burst above qps, requests.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per API request timeout, seconds.")


class ProducerSettings(BaseModel):
    api: Literal["core/v1", "events.k8s.io/v1"] = "core/v1"
    namespaces: CsvList = Field(default_factory=list, description="Empty: all namespaces.")
    label_selector: str | None = None
    field_selector: str | None = None
    include_deleted: bool = Field(False, description="Publish DELETED (TTL expiry) too.")
    list_page_size: int = Field(500, ge=1, description="Items per paginated LIST request.")
    watch_timeout_s: int = Field(
        290, ge=10, description="Server-side watch timeout; the watch is renewed after it."
    )
    backoff_max_s: float = Field(30.0, gt=0, description="Longest reconnect backoff, seconds.")
    leader_election: bool = Field(True, description="Only the Lease holder publishes.")
    lease_name: str = "kubevents-producer"
    lease_namespace: str = Field(
        default_factory=lambda: _pod_namespace() or "default",
        description="Namespace of the Lease (in a cluster: the pod's own).",
    )
    lease_duration_s: float = Field(15.0, gt=0, description="Lease validity, seconds.")
    renew_period_s: float = Field(5.0, gt=0, description="How often the leader renews, seconds.")
    identity: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This replica's identity in the Lease and in published records.",
    )
    http_port: int = Field(8080, ge=0, le=65535, description="Health and metrics port; 0: off.")
    http_bind: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 in containers.")

    _split_namespaces = field_validator("namespaces", mode="before")(_split_csv)


class WorkerSettings(BaseModel):
    """How a worker process runs, whatever its pipeline: Faust's store, web server, group
    membership and batch size (the pipeline's own logic has its own section)."""

    store: str = Field("memory://", description="Table store: memory:// or rocksdb://.")
    sink_group_prefix: str = Field(
        "kubevents-sink-",
        description="A sink pipeline's consumer group is this followed by its id, unless it"
        " names its own group (two installations sharing a Kafka cluster need different ones).",
    )
    data_dir: Path = Field(Path("kubevents-data"), description="Faust data dir (RocksDB).")
    web_host: str = Field(
        default_factory=socket.gethostname,
        description="Host name in this worker's URL (default: the host name).",
    )
    web_bind: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 in containers.")
    web_port: int = Field(6066, ge=1, le=65535)
    canonical_url: str | None = Field(
        None, description="URL other workers use to reach this one (table routing)."
    )
    standby_replicas: int = Field(1, ge=0, description="Warm table copies on other workers.")
    session_timeout_s: float = Field(
        30.0, gt=0, description="A worker silent this long is dead: its partitions move, s."
    )
    batch_size: int = Field(
        1000,
        ge=1,
        description="Most raw records processed (and their outputs published) together; a batch"
        " is what one fetch brought, so nothing waits for a batch to fill.",
    )
    stall_warning_s: float = Field(
        30.0,
        gt=0,
        description="A pipeline owning unread records that hands no batch over for this long"
        " logs a warning with its consumer's state (and kubevents_pipeline_stalled_seconds), s.",
    )


class CoreSettings(BaseModel):
    app_id: str = Field("kubevents-core", description="Faust app id = consumer group.")
    max_record_bytes: int = Field(1 << 20, ge=1024, description="Larger raw records go to DLQ.")
    dedupe_ttl_s: float = Field(
        4500.0, gt=0, description="Keep an event uid this long (API server keeps events 1 h)."
    )
    owner_lookup: bool = Field(True, description="Resolve owner chains from the API server.")
    enrich_timeout_s: float = Field(2.0, gt=0, description="Budget for one owner lookup, s.")
    owner_cache_size: int = Field(10_000, ge=1, description="Objects kept in the owner cache.")
    owner_cache_ttl_s: float = Field(300.0, gt=0, description="Owner cache entry life, s.")
    label_keys: CsvList = Field(
        default_factory=lambda: [
            "app",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "k8s-app",
        ],
        description="Labels of the involved object copied onto the event.",
    )
    tumbling_s: float = Field(60.0, gt=0, description="Tumbling count window size, seconds.")
    hopping_size_s: float = Field(3600.0, gt=0, description="Hopping window size, seconds.")
    hopping_step_s: float = Field(300.0, gt=0, description="Hopping window step, seconds.")
    window_expires_s: float = Field(7200.0, gt=0, description="Windows kept this long, s.")

    _split_labels = field_validator("label_keys", mode="before")(_split_csv)


class RunSettings(BaseModel):
    """``kubevents run``: how many of each process it starts, and on which ports."""

    producer_replicas: int = Field(1, ge=0, description="Producers (one leads, others wait).")
    core_replicas: int = Field(1, ge=0, description="Core workers (they share partitions).")
    base_port: int = Field(
        8080, ge=1, le=65000, description="HTTP ports of the processes, from this one up."
    )
    status_interval_s: float = Field(10.0, gt=0, description="Status lines every this many s.")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait before a restart.")


Severity = Literal["info", "warning", "critical"]


class FilterSettings(BaseModel):
    """Which events a sink pipeline writes; every condition set must hold. Empty: everything."""

    types: CsvList = Field(default_factory=list, description="Normal, Warning; empty: both.")
    namespaces: CsvList = Field(default_factory=list, description="Only these; empty: all.")
    exclude_namespaces: CsvList = Field(default_factory=list, description="Never these.")
    kinds: CsvList = Field(
        default_factory=list, description="Involved object kinds (Pod, Node ...); empty: all."
    )
    reason: str | None = Field(None, description="Regular expression the reason must match.")
    min_severity: Severity = Field("info", description="info < warning < critical.")

    _split = field_validator("types", "namespaces", "exclude_namespaces", "kinds", mode="before")(
        _split_csv
    )


class ElasticsearchSinkSettings(BaseModel):
    """An Elasticsearch 8 or 9 destination (kube-eventer's option names in comments)."""

    url: str | None = Field(
        None, description="Node URL(s), comma-separated (kube-eventer: the URL and nodes=)."
    )
    index: str = Field(
        "k8s-events",
        description="Daily indices <index>-YYYY.MM.DD behind the read alias <index> (index=).",
    )
    username: str | None = Field(None, description="Basic auth user (esUserName=).")
    password: SecretStr | None = Field(None, description="Basic auth password (esUserSecret=).")
    api_key: SecretStr | None = Field(None, description="API key, instead of user/password.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the nodes.")
    verify_certs: bool = Field(True, description="Check the nodes' certificates.")
    max_retries: int = Field(
        3, ge=0, description="Transport retries of one request before the pipeline's (maxRetries=)."
    )
    health_check: bool = Field(True, description="Check the cluster at start (healthCheck=).")
    sniff: bool = Field(False, description="Discover the other nodes (sniff=).")
    startup_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long start-up waits for the cluster, s (startupHealthcheckTimeout=).",
    )
    bulk_workers: int = Field(
        2, ge=1, description="Bulk requests of one batch in flight at once (bulkWorkers=)."
    )
    cluster_name: str | None = Field(
        None, description="Overrides the cluster name stamped on documents (cluster_name=)."
    )
    pipeline: str | None = Field(None, description="Ingest pipeline run on each document.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per request timeout, seconds.")
    retention_days: int | None = Field(
        None, ge=1, description="Delete daily indices older than this; unset: keep forever."
    )

    @property
    def urls(self) -> list[str]:
        return _split_csv(self.url or "")  # type: ignore[no-any-return]


class MySQLSinkSettings(BaseModel):
    """A MySQL 8 or MariaDB 10.11+ destination."""

    url: SecretStr | None = Field(
        None, description="SQLAlchemy URL, mysql+pymysql://user:password@host:3306/database."
    )
    table: str = Field("k8s_events", description="Table name.")
    pool_size: int = Field(2, ge=1, description="Connections kept open.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Connect timeout, seconds.")
    chunk_rows: int = Field(500, ge=1, description="Rows per multi-row upsert statement.")
    # TLS: PyMySQL's parameter names, the ones users copy from SQLAlchemy URLs (?ssl_ca=...).
    ssl_mode: Literal["disabled", "preferred", "required"] | None = Field(
        None,
        description="TLS to the server: disabled; preferred (TLS when the server offers it,"
        " unverified, plain otherwise: PyMySQL's own default); required. Unset: required when"
        " ssl_ca, ssl_cert, ssl_key or a verification is set, else preferred.",
    )
    ssl_ca: Path | None = Field(
        None, description="CA bundle (PEM) that signed the server's certificate; unset: system CAs."
    )
    ssl_cert: Path | None = Field(None, description="Client certificate (PEM), mutual TLS.")
    ssl_key: Path | None = Field(None, description="Client key (PEM) of ssl_cert.")
    ssl_verify_cert: bool | None = Field(
        None,
        description="Check the server's certificate against ssl_ca (or the system CAs)."
        " Unset: on whenever TLS is required; false encrypts without checking (testing only).",
    )
    ssl_verify_identity: bool | None = Field(
        None,
        description="Check that the certificate names the URL's host. Unset: as ssl_verify_cert.",
    )

    @field_validator("ssl_ca", "ssl_cert", "ssl_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # KUBEVENTS_MYSQL_SSL_CA= (empty) means "not set", not Path("") (the current dir).
        return None if value == "" else value


class KafkaSinkSettings(KafkaSettings):
    """Another topic, possibly on another cluster with its own security settings."""

    topic: str = Field("k8s-events-copy", description="Destination topic (eventstopic=).")
    brokers: str | None = Field(  # type: ignore[assignment]
        None, description="Destination brokers; unset: the source cluster's (brokers=)."
    )


SinkKind = Literal["elasticsearch", "mysql", "kafka"]


class PipelineSettings(BaseModel):
    """One sink pipeline: its own consumer group (kubevents-sink-<id>) reading k8s-events,
    like one entry of Logstash's pipelines.yml."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Name; the group's suffix.")
    sink: SinkKind
    batch_size: int = Field(1000, ge=1, description="Most events written in one go.")
    batch_delay_ms: int = Field(
        50, ge=0, description="Wait up to this long for a batch to fill (linger)."
    )
    concurrency: int = Field(1, ge=1, description="Writes of one batch in flight at once.")
    retry_initial_ms: int = Field(200, ge=1, description="First retry backoff, ms.")
    retry_max_ms: int = Field(30_000, ge=1, description="Longest retry backoff, ms (jittered).")
    replicas: int = Field(1, ge=0, description="Workers `kubevents run` starts for it.")
    filters: FilterSettings = Field(default_factory=FilterSettings)
    elasticsearch: ElasticsearchSinkSettings | None = None
    mysql: MySQLSinkSettings | None = None
    kafka: KafkaSinkSettings | None = None
    group: str | None = Field(
        None, description="Its consumer group; default: worker.sink_group_prefix + id."
    )

    @property
    def app_id(self) -> str:
        """Its consumer group (and Faust app id): set by Settings.sink_pipelines()."""
        return self.group or f"kubevents-sink-{self.id}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KUBEVENTS_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        frozen=True,
    )

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    core: CoreSettings = Field(default_factory=CoreSettings)
    # Defaults of every pipeline of that sink kind; with a URL and no pipeline of that kind
    # declared, a pipeline named after the kind exists (see ``sink_pipelines``).
    elasticsearch: ElasticsearchSinkSettings = Field(default_factory=ElasticsearchSinkSettings)
    mysql: MySQLSinkSettings = Field(default_factory=MySQLSinkSettings)
    # Of every kafka pipeline. One word, as the first "_" ends the section's name in the
    # environment: KUBEVENTS_KAFKASINK_SASL_PASSWORD is how a kafka pipeline writing to another
    # cluster gets its password without it being written in the pipelines file.
    kafkasink: KafkaSinkSettings = Field(default_factory=KafkaSinkSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    pipelines: list[PipelineSettings] = Field(
        default_factory=list, description="Sink pipelines, as in Logstash's pipelines.yml."
    )
    faults: str = Field(
        default="",
        description="Test only: fault points to fire, POINT=exit|hang|delay:S[@N],... "
        "(app/testing/faults.py). Empty in production.",
    )

    def sink_pipelines(self) -> list[PipelineSettings]:
        """The declared pipelines, each sink's options completed from its kind's defaults (the
        ``elasticsearch``/``mysql`` sections); plus, for a kind with a URL set and no pipeline
        declared, the default pipeline named after it."""
        out: list[PipelineSettings] = []
        defaults: dict[str, BaseModel] = {
            "elasticsearch": self.elasticsearch,
            "mysql": self.mysql,
            "kafka": self.kafkasink,
        }
        for declared in self.pipelines:
            base = defaults[declared.sink]
            own = getattr(declared, declared.sink)
            merged = {
                **base.model_dump(exclude_unset=True),
                **(own.model_dump(exclude_unset=True) if own is not None else {}),
            }
            options = type(base).model_validate(merged)
            out.append(declared.model_copy(update={declared.sink: options}))
        kinds = {p.sink for p in out}
        if self.elasticsearch.url and "elasticsearch" not in kinds:
            out.append(
                PipelineSettings(
                    id="elasticsearch", sink="elasticsearch", elasticsearch=self.elasticsearch
                )
            )
        if self.mysql.url and "mysql" not in kinds:
            out.append(PipelineSettings(id="mysql", sink="mysql", mysql=self.mysql))
        prefix = self.worker.sink_group_prefix
        out = [p if p.group else p.model_copy(update={"group": prefix + p.id}) for p in out]
        ids = [p.id for p in out]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            from app.errors import UserError

            raise UserError(f"pipeline ids must be unique: {', '.join(duplicated)} repeated")
        return out

    def pipeline(self, pipeline_id: str) -> PipelineSettings:
        for pipeline in self.sink_pipelines():
            if pipeline.id == pipeline_id:
                return pipeline
        from app.errors import UserError

        known = ", ".join(["core", *(p.id for p in self.sink_pipelines())])
        raise UserError(
            f"unknown pipeline {pipeline_id}: declared are {known} (pipelines in the config"
            " file, or KUBEVENTS_ELASTICSEARCH_URL / KUBEVENTS_MYSQL_URL for the defaults)"
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("KUBEVENTS_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


# The YAML file of the settings being built (read by settings_customise_sources, a classmethod
# that sees no arguments): a context variable, not the environment, carries it.
_config_file: ContextVar[str | None] = ContextVar("kubevents_config_file", default=None)


def load_settings(
    config_file: str | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Build the settings once: ``overrides`` (command-line flags, by section) > environment
    (``KUBEVENTS_*``) > the YAML file ``config_file`` (or $KUBEVENTS_CONFIG) > defaults."""
    if config_file and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    flags = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in (overrides or {}).items()
    }
    token = _config_file.set(config_file)
    try:
        init: dict[str, Any] = {section: values for section, values in flags.items() if values}
        return Settings(**init)
    finally:
        _config_file.reset(token)
