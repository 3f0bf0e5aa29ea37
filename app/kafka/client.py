"""Kafka client settings shared by the producer, replay and the workers; topic creation."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from app.errors import UserError
from app.kafka.renewing import RenewingProducer, set_compression_level
from app.settings import KafkaSettings, TopicSettings

# Keys repeat (every event of one object has its uid) and aiokafka's murmur2 is pure Python:
# remember recent hashes. Bounded; the hash is the partitioner's, only computed once per key.
_murmur2 = functools.lru_cache(maxsize=1 << 16)(murmur2)


def partition_of(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of ``key`` among ``partitions`` (sorted), as aiokafka's, Java's and Faust's
    default partitioner (murmur2) picks it."""
    return partitions[(int(_murmur2(key)) & 0x7FFFFFFF) % len(partitions)]


def ready_batches(
    producer: Any, records: Sequence[tuple[bytes, bytes]]
) -> Iterator[tuple[Any, list[tuple[bytes, bytes]]]]:
    """Split one partition's records into ready-made aiokafka batches, each with the records it
    holds; one future per batch instead of one per record. Each batch is closed: it is complete,
    so ``send_batch`` sends it now rather than after ``linger_ms``."""
    batch: Any = producer.create_batch()
    chunk: list[tuple[bytes, bytes]] = []
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
            batch.close()
            yield batch, chunk
            batch, chunk = producer.create_batch(), []
            batch.append(key=key, value=value, timestamp=None)
        chunk.append((key, value))
    if chunk:
        batch.close()
        yield batch, chunk


_TLS_FILES = {
    "ssl_cafile": "the CA bundle that signed the brokers' certificates",
    "ssl_certfile": "the client certificate (PEM)",
    "ssl_keyfile": "the client certificate's private key (PEM)",
}


def _tls_file(kafka: KafkaSettings, field: str) -> str | None:
    """The file's path, or a UserError naming the variable (ssl's own error names no setting)."""
    path: Path | None = getattr(kafka, field)
    if path is None:
        return None
    if not path.is_file():
        raise UserError(
            f"KUBEVENTS_KAFKA_{field.upper()}={str(path)!r} is not a readable file:"
            f" set it to {_TLS_FILES[field]}"
        )
    return str(path)


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile, certfile, keyfile = (_tls_file(kafka, field) for field in _TLS_FILES)
    try:
        ctx = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    except ssl.SSLError as exc:
        raise UserError(
            f"cannot load the Kafka TLS files ({exc.reason or exc}): KUBEVENTS_KAFKA_SSL_CAFILE,"
            " _SSL_CERTFILE and _SSL_KEYFILE must be PEM files, the key matching the certificate"
        ) from None
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
    set_compression_level(kafka.compression, kafka.compression_level)
    return {
        **client_kwargs(kafka),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if kafka.compression == "none" else kafka.compression,
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_bytes,
    }


async def start_producer(kafka: KafkaSettings, client_id: str) -> RenewingProducer:
    """A started producer with kubevents' settings (replaced if its sender stops for good), or a
    UserError saying that Kafka cannot be reached."""
    producer = RenewingProducer(lambda: AIOKafkaProducer(**producer_kwargs(kafka, client_id)))
    try:
        await producer.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        raise unreachable(kafka, exc) from None
    return producer


def unreachable(kafka: KafkaSettings, exc: Exception) -> UserError:
    return UserError(
        f"cannot reach Kafka at {kafka.brokers} ({exc.__class__.__name__}: {exc}); check"
        " KUBEVENTS_KAFKA_BROKERS, that the brokers are up, and the security settings"
        f" (security_protocol={kafka.security_protocol})"
    )


def explain_connect_failure(kafka: KafkaSettings, broker: str, exc: Exception) -> UserError:
    """One line naming why one broker refused us, and the setting that fixes it."""
    if isinstance(exc, SaslAuthenticationFailed):
        return UserError(
            f"Kafka at {broker} rejected user {kafka.sasl_username!r} with SASL mechanism"
            f" {kafka.sasl_mechanism} ({exc.args[0] if exc.args else exc.description}): check"
            " KUBEVENTS_KAFKA_SASL_USERNAME, KUBEVENTS_KAFKA_SASL_PASSWORD and"
            " KUBEVENTS_KAFKA_SASL_MECHANISM (a SCRAM user exists per mechanism)"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return UserError(
            f"Kafka at {broker}: {exc.description or exc}; set KUBEVENTS_KAFKA_SASL_MECHANISM"
            " to one the broker enables"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = (
            f"KUBEVENTS_KAFKA_SSL_CAFILE={str(kafka.ssl_cafile)!r}"
            if kafka.ssl_cafile
            else "the system's CAs (KUBEVENTS_KAFKA_SSL_CAFILE is not set)"
        )
        return UserError(
            f"the TLS certificate of Kafka at {broker} failed verification against {ca}"
            f" ({exc.verify_message}): set KUBEVENTS_KAFKA_SSL_CAFILE to the CA that signed the"
            " brokers' certificates (KUBEVENTS_KAFKA_SSL_INSECURE_SKIP_VERIFY=true skips the"
            " check: for testing only)"
        )
    if isinstance(exc, ssl.SSLError):
        return UserError(
            f"TLS handshake with Kafka at {broker} failed ({exc.reason or exc}): check that"
            f" {broker} is a TLS listener (security_protocol={kafka.security_protocol}) and the"
            " KUBEVENTS_KAFKA_SSL_* files"
        )
    if (
        isinstance(exc, KafkaConnectionError)
        and kafka.security_protocol in ("SSL", "SASL_SSL")
        and kafka.ssl_certfile is None
    ):
        # A listener requiring client certificates closes the connection after the TLS 1.3
        # handshake, with nothing more specific for the client to report.
        return UserError(
            f"Kafka at {broker} closed the TLS connection ({exc}): if its listener requires"
            " client certificates (mutual TLS), set KUBEVENTS_KAFKA_SSL_CERTFILE and"
            " KUBEVENTS_KAFKA_SSL_KEYFILE"
        )
    return unreachable(kafka, exc)


async def diagnose(kafka: KafkaSettings, failure: Exception) -> UserError:
    """Why the brokers cannot be used: aiokafka's own error (``failure``) says only "Unable to
    bootstrap", so connect to each bootstrap broker once more and explain the first refusal."""
    kw = client_kwargs(kafka)
    first: UserError | None = None
    for broker in kafka.bootstrap_servers:
        host, _, port = broker.rpartition(":") if ":" in broker else (broker, "", "9092")
        try:
            conn = await create_conn(
                host,
                int(port),
                client_id="kubevents-diagnose",
                request_timeout_ms=kafka.request_timeout_ms,
                ssl_context=kw.get("ssl_context"),
                security_protocol=kafka.security_protocol,
                sasl_mechanism=kw.get("sasl_mechanism"),
                sasl_plain_username=kw.get("sasl_plain_username"),
                sasl_plain_password=kw.get("sasl_plain_password"),
            )
        except (OSError, KafkaError) as exc:  # TimeoutError is an OSError
            first = first or explain_connect_failure(kafka, broker, exc)
        else:
            conn.close()
    return first or unreachable(kafka, failure)


async def _admin(kafka: KafkaSettings) -> AIOKafkaAdminClient:
    """A started admin client, or the one-line diagnosis of why Kafka cannot be reached."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), client_id="kubevents-admin")
    # Every command talks to Kafka here first: a failure is explained in one line by diagnose(),
    # so aiokafka's own "Unable connect" log line would only repeat it less clearly.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        await admin.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        await admin.close()
        raise (await diagnose(kafka, exc)) from None
    finally:
        client_log.setLevel(level)
    return admin


async def _create_missing(
    admin: AIOKafkaAdminClient, names: list[str], partitions: int, replication_factor: int
) -> list[str]:
    existing = set(await admin.list_topics())
    created: list[str] = []
    for name in [t for t in names if t not in existing]:
        try:
            await admin.create_topics([NewTopic(name, partitions, replication_factor)])
            created.append(name)
        except TopicAlreadyExistsError:
            pass
    return created


async def ensure_topic(
    kafka: KafkaSettings, name: str, partitions: int, replication_factor: int
) -> bool:
    """Create one topic (say, the Kafka sink's, maybe on another cluster) if missing."""
    admin = await _admin(kafka)
    try:
        return bool(await _create_missing(admin, [name], partitions, replication_factor))
    finally:
        await admin.close()


async def ensure_topics(
    kafka: KafkaSettings,
    topics: TopicSettings,
    extra: tuple[str, ...] = (),
    *,
    raw_partitions_must_match: bool = False,
) -> list[str]:
    """Create kubevents' topics (and ``extra`` ones) if missing; returns the ones created.

    ``raw_partitions_must_match`` (the core worker): its tables are co-partitioned with the raw
    topic, their changelogs get ``topics.partitions`` partitions, so the raw topic must have as
    many (Faust would otherwise fail at the first table write, long after start-up)."""
    admin = await _admin(kafka)
    try:
        names = [topics.raw, topics.enriched, topics.dlq, *extra]
        created = await _create_missing(admin, names, topics.partitions, topics.replication_factor)
        if raw_partitions_must_match:
            described = await admin.describe_topics([topics.raw])
            found = len(described[0].get("partitions") or []) if described else 0
            if found and found != topics.partitions:
                raise UserError(
                    f"topic {topics.raw} has {found} partitions but KUBEVENTS_TOPICS_PARTITIONS"
                    f" is {topics.partitions}: set KUBEVENTS_TOPICS_PARTITIONS={found} (the core"
                    " worker's tables have as many partitions as the raw topic)"
                )
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
