"""The Faust app of one pipeline: one app, one consumer group, one process.

``create_app(settings, app_id)`` builds it; a pipeline's agents and tables register on the app they
are handed (``agents/``, ``tables/``); ``kubevents worker --pipeline NAME`` builds the app, applies
the Faust corrections (app/worker/faust_fixes.py) and runs it. Importing this module reads no
settings and builds nothing."""

from __future__ import annotations

from typing import Any

import faust
import mode

from app.kafka.client import ssl_context
from app.obs import HttpServer
from app.settings import KafkaSettings, Settings


def broker_credentials(kafka: KafkaSettings) -> Any:
    ctx = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=ctx,
            mechanism=kafka.sasl_mechanism,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def create_app(settings: Settings, app_id: str) -> faust.App:
    """The Faust app of the pipeline ``app_id`` (its consumer group), with kubevents' defaults."""
    worker = settings.worker
    return faust.App(
        app_id,
        broker=[f"kafka://{b}" for b in settings.kafka.bootstrap_servers],
        broker_credentials=broker_credentials(settings.kafka),
        store=worker.store,
        datadir=str(worker.data_dir),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        table_standby_replicas=worker.standby_replicas,
        web_host=worker.web_host,
        web_bind=worker.web_bind,
        web_port=worker.web_port,
        canonical_url=worker.canonical_url or f"http://{worker.web_host}:{worker.web_port}",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type=(
            None if settings.kafka.compression == "none" else settings.kafka.compression
        ),
        producer_linger_ms=settings.kafka.linger_ms,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=min(3.0, worker.session_timeout_s / 3),
        # The core agent publishes its outputs itself and acks a record only once they are
        # acknowledged (agents/core.py); nothing is sent through Faust's attachments.
        stream_publish_on_commit=False,
        # On shutdown, do not wait for records in flight to be acked: a crashed agent never
        # acks them and the worker would hang; unacked records are not committed and are
        # processed again after the restart.
        stream_wait_empty=False,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        autodiscover=False,
        # Faust's web server is off: every kubevents process serves /healthz, /readyz, /metrics
        # (and the core its counts API) from the one server of app/obs.py (``HttpService``).
        # canonical_url still tells the other workers where this one's counts are.
        web_enabled=False,
    )


class HttpService(mode.Service):
    """The process's HTTP server (app/obs.py), started and stopped with the Faust worker.
    It answers from the start: /readyz says 503 with the reason until the pipeline is ready."""

    def __init__(self, http: HttpServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http = http

    async def on_start(self) -> None:
        await self.http.start()

    async def on_stop(self) -> None:
        await self.http.stop()


def http_server(settings: Settings) -> HttpServer:
    return HttpServer(settings.worker.web_bind, settings.worker.web_port)


def bytes_topic(app: faust.App, name: str, internal: bool = False) -> Any:
    """Keys and values stay bytes: kubevents decodes itself, so bad input reaches the DLQ."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=internal,
    )
