"""The Kafka options users set reach the clients as aiokafka expects them (no broker needed;
tests/integration/test_kafka_security.py proves them against the stack's secured listeners)."""

from __future__ import annotations

import ssl

import pytest
from pydantic import SecretStr

from app.errors import UserError
from app.kafka.client import client_kwargs, producer_kwargs
from app.settings import KafkaSettings


def test_plaintext_producer_is_idempotent_with_acks_all() -> None:
    kw = producer_kwargs(KafkaSettings(brokers="a:9092,b:9092", compression="none"), "id")
    assert kw["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert kw["acks"] == "all" and kw["enable_idempotence"] is True
    assert kw["compression_type"] is None and "ssl_context" not in kw
    assert "sasl_mechanism" not in kw


def test_sasl_scram_over_tls_without_verification() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="kv",
        sasl_password=SecretStr("s3cret"),
        ssl_insecure_skip_verify=True,
        compression="zstd",
    )
    kw = client_kwargs(kafka)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("kv", "s3cret")
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert producer_kwargs(kafka, "id")["compression_type"] == "zstd"
    assert "s3cret" not in repr(kafka), "the password is masked wherever settings are printed"


def test_tls_verifies_by_default() -> None:
    ctx = client_kwargs(KafkaSettings(security_protocol="SSL"))["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_an_empty_variable_means_unset_and_a_missing_tls_file_is_named() -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile="", ssl_certfile="/no/such.pem")
    assert kafka.ssl_cafile is None, "not Path('') (the current directory)"
    with pytest.raises(UserError, match=r"KUBEVENTS_KAFKA_SSL_CERTFILE='/no/such.pem' is not a"):
        client_kwargs(kafka)


def test_the_compression_level_reaches_aiokafkas_batch_builder() -> None:
    import aiokafka.codec
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from app.kafka.renewing import set_compression_level

    def batch_size(level: int) -> int:
        set_compression_level("lz4", level)
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=3,  # lz4
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=1 << 20,
        )
        for i in range(200):
            value = f'{{"event": {i}, "reason": "BackOff", "message": "Back-off restarting"}}'
            builder.append(i, timestamp=None, key=b"k", value=value.encode() * 4, headers=[])
        return len(builder.build())

    try:
        fast, small = batch_size(1), batch_size(9)
        assert small < fast  # the level really is the one used
    finally:
        set_compression_level("lz4", None)  # back to kubevents' default
    assert aiokafka.codec.lz4_encode.__defaults__ == (9,)  # aiokafka's own function untouched
