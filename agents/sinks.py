"""A sink pipeline on its own Faust app: k8s-events -> filters -> one destination.

``kubevents worker --pipeline <id>`` builds the app of consumer group ``kubevents-sink-<id>`` and
calls ``register``: the pipeline's handler (app/sinks/pipeline.py) runs on the batch loop every
pipeline shares (app/worker/batch_loop.py: ack, and so commit, only after the write), lingering up
to ``batch_delay_ms`` for batches of up to ``batch_size`` records.
"""

from __future__ import annotations

from typing import Any

from app.kafka.writer import BatchWriter
from app.obs import HttpServer
from app.settings import PipelineSettings, Settings
from app.sinks.base import Sink
from app.sinks.pipeline import SinkPipeline
from app.worker.app import bytes_topic
from app.worker.batch_loop import BatchLoop


def make_sink(pipeline: PipelineSettings, settings: Settings) -> Sink:
    """The destination of ``pipeline`` (its module imported only when used)."""
    if pipeline.sink == "elasticsearch":
        from app.sinks.elasticsearch import ElasticsearchSink

        assert pipeline.elasticsearch is not None  # completed by Settings.sink_pipelines()
        return ElasticsearchSink(pipeline.elasticsearch, settings.cluster.name)
    if pipeline.sink == "mysql":
        from app.sinks.mysql import MySQLSink

        assert pipeline.mysql is not None
        return MySQLSink(pipeline.mysql)
    from app.sinks.kafka import KafkaSink

    assert pipeline.kafka is not None
    topics = settings.topics
    return KafkaSink(pipeline.kafka, settings.kafka, topics.partitions, topics.replication_factor)


def register(app: Any, settings: Settings, http: HttpServer, pipeline: PipelineSettings) -> None:
    async def dead_letters() -> BatchWriter:
        return await BatchWriter.start(settings.kafka, f"{pipeline.app_id}-dlq")

    handler = SinkPipeline(
        pipeline, make_sink(pipeline, settings), dead_letters, settings.topics.dlq
    )
    loop = BatchLoop(
        app,
        bytes_topic(app, settings.topics.enriched),
        handler,
        name=pipeline.id,
        batch_size=pipeline.batch_size,
        linger_ms=pipeline.batch_delay_ms,
        linger_records=pipeline.batch_size,
        stall_warning_s=settings.worker.stall_warning_s,
    )
    loop.register()
    http.add_check(loop.check)
    http.add_check(handler.check)
