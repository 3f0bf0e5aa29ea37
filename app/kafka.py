"""Kafka client settings shared by the producer, replay and the workers; topic creation."""

from __future__ import annotations

import ssl
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import OffsetAndMetadata

from app.errors import UserError
from app.settings import KafkaSettings, TopicSettings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = create_ssl_context(
        cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    )
    if kafka.ssl_insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return cast(ssl.SSLContext, ctx)


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options common to producers, consumers and the admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    ctx = ssl_context(kafka)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    return kwargs


def producer_kwargs(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    """acks=all + idempotence: a broker failover neither loses nor duplicates a send.

    aiokafka's default partitioner is murmur2, as Faust and the Java client expect."""
    return {
        **client_kwargs(kafka),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if kafka.compression == "none" else kafka.compression,
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_bytes,
    }


def unreachable(kafka: KafkaSettings, exc: Exception) -> UserError:
    return UserError(
        f"cannot reach Kafka at {kafka.brokers} ({exc.__class__.__name__}: {exc}); check"
        " KUBEVENTS_KAFKA_BROKERS, that the brokers are up, and the security settings"
        f" (security_protocol={kafka.security_protocol})"
    )


async def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, extra: tuple[str, ...] = ()
) -> list[str]:
    """Create kubevents' topics (and ``extra`` ones) if missing; returns the ones created."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), client_id="kubevents-admin")
    try:
        await admin.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        raise unreachable(kafka, exc) from None
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in (topics.raw, topics.enriched, topics.dlq, *extra) if t not in existing]
        for name in wanted:
            try:
                await admin.create_topics(
                    [NewTopic(name, topics.partitions, topics.replication_factor)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


async def pin_unstarted_partitions(kafka: KafkaSettings, group: str, topics: list[str]) -> int:
    """Commit the log-start offset for every partition the group has never committed.

    A partition that moves to another worker before its first commit must not be started
    "wherever the consumer happens to be": the test of two workers lost the first records of
    such partitions. With an explicit offset, a new owner starts at the beginning. Returns the
    number of partitions pinned; does nothing once the group has members (they own it then).
    """
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
        consumer.assign(tps)
        missing = [tp for tp in tps if await consumer.committed(tp) is None]
        if not missing:
            return 0
        starts = await consumer.beginning_offsets(missing)
        try:
            await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in starts.items()})
        except KafkaError:
            return 0  # the group is active: its members commit for themselves
        return len(missing)
    finally:
        await consumer.stop()
