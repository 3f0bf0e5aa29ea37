from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.cli import main
from app.errors import UserError
from app.producer.replay import read_events
from app.settings import load_settings
from app.sinks.kafka import destination
from tests.fixtures.events import core_event

EXAMPLE = Path("examples/kubevents.yaml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("KUBEVENTS_"):
            monkeypatch.delenv(key)
    # load_settings(file) sets KUBEVENTS_CONFIG itself: have monkeypatch remove it afterwards,
    # or every later test of the session (and the processes it starts) reads the example file.
    monkeypatch.setenv("KUBEVENTS_CONFIG", "")
    monkeypatch.delenv("KUBEVENTS_CONFIG")


def test_env_sections_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEVENTS_KAFKA_BROKERS", "a:9092, b:9092")
    monkeypatch.setenv("KUBEVENTS_PRODUCER_NAMESPACES", "shop,db")
    monkeypatch.setenv("KUBEVENTS_CORE_LABEL_KEYS", "app,team")
    monkeypatch.setenv("KUBEVENTS_KUBERNETES_QPS", "7.5")
    s = load_settings()
    assert s.kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert s.producer.namespaces == ["shop", "db"] and s.core.label_keys == ["app", "team"]
    assert s.kubernetes.qps == 7.5


def test_yaml_file_with_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEVENTS_TOPICS_PARTITIONS", "3")
    s = load_settings(str(EXAMPLE))
    assert s.cluster.name == "prod-eu-1" and s.kafka.compression == "zstd"
    assert s.topics.partitions == 3, "environment beats the file"
    assert s.worker.store == "rocksdb://"


def test_config_command_never_prints_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBEVENTS_KAFKA_SASL_PASSWORD", "hunter2")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and json.loads(out)["kafka"]["sasl_password"] == "**********"


def test_unknown_pipeline_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--pipeline", "cores"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kubevents: error: unknown pipeline cores:")
    assert "declared are core" in err[0] and "KUBEVENTS_ELASTICSEARCH_URL" in err[0]


PIPELINES_YAML = """
elasticsearch:
  username: elastic
pipelines:
  - id: all-events
    sink: elasticsearch
    elasticsearch: {url: "http://es-a:9200,http://es-b:9200"}
  - id: warnings
    sink: elasticsearch
    batch_size: 200
    filters: {types: [Warning], exclude_namespaces: [kube-system]}
    elasticsearch: {url: "http://es-warn:9200", index: warnings}
  - id: copy
    sink: kafka
    kafka: {topic: events-copy}
"""


def test_sink_groups_take_the_prefix_unless_a_pipeline_names_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubevents.yaml"
    config.write_text(
        "pipelines:\n  - {id: a, sink: kafka}\n  - {id: b, sink: kafka, group: audit-copy}\n"
    )
    monkeypatch.setenv("KUBEVENTS_WORKER_SINK_GROUP_PREFIX", "eu-1-sink-")
    groups = {p.id: p.app_id for p in load_settings(str(config)).sink_pipelines()}
    assert groups == {"a": "eu-1-sink-a", "b": "audit-copy"}


def test_pipelines_from_yaml_two_of_one_kind_with_the_kind_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubevents.yaml"
    config.write_text(PIPELINES_YAML)
    monkeypatch.setenv("KUBEVENTS_MYSQL_URL", "mysql+pymysql://root@db:3306/events")
    pipelines = {p.id: p for p in load_settings(str(config)).sink_pipelines()}
    assert list(pipelines) == ["all-events", "warnings", "copy", "mysql"]
    es, warn = pipelines["all-events"].elasticsearch, pipelines["warnings"].elasticsearch
    assert es is not None and warn is not None
    assert es.urls == ["http://es-a:9200", "http://es-b:9200"] and es.index == "k8s-events"
    assert warn.urls == ["http://es-warn:9200"] and warn.index == "warnings"
    assert es.username == warn.username == "elastic"  # the kind's section fills the rest
    assert pipelines["warnings"].filters.types == ["Warning"]
    assert pipelines["warnings"].app_id == "kubevents-sink-warnings"
    assert pipelines["copy"].kafka is not None and pipelines["copy"].kafka.topic == "events-copy"
    mysql = pipelines["mysql"].mysql  # from the URL alone
    assert mysql is not None and mysql.url is not None
    assert mysql.url.get_secret_value().endswith("/events")


def test_kafka_pipelines_take_the_kafkasink_section_so_a_password_stays_out_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kafka pipeline to another cluster gets its secret from KUBEVENTS_KAFKASINK_* (the
    Helm chart sets it from the pipeline's own Secret), its other options from the file; a
    kafka pipeline without brokers still writes to the source cluster with the source's
    credentials."""
    config = tmp_path / "kubevents.yaml"
    config.write_text(
        "pipelines:\n"
        "  - id: audit\n"
        "    sink: kafka\n"
        "    kafka: {topic: audit, brokers: 'audit-0:9093', security_protocol: SASL_SSL,"
        " sasl_mechanism: SCRAM-SHA-512, sasl_username: kv}\n"
        "  - {id: copy, sink: kafka}\n"
    )
    monkeypatch.setenv("KUBEVENTS_KAFKASINK_SASL_PASSWORD", "audit-secret")
    monkeypatch.setenv("KUBEVENTS_KAFKA_SASL_PASSWORD", "source-secret")
    settings = load_settings(str(config))
    pipelines = {p.id: p for p in settings.sink_pipelines()}
    audit, copy = pipelines["audit"].kafka, pipelines["copy"].kafka
    assert audit is not None and copy is not None
    audit_client = destination(audit, settings.kafka)
    assert audit_client.brokers == "audit-0:9093" and audit_client.sasl_username == "kv"
    assert audit_client.security_protocol == "SASL_SSL"
    assert audit_client.sasl_password is not None
    assert audit_client.sasl_password.get_secret_value() == "audit-secret"
    assert audit.topic == "audit" and copy.topic == "k8s-events-copy"
    copy_client = destination(copy, settings.kafka)
    assert copy_client.sasl_password is not None
    assert copy_client.sasl_password.get_secret_value() == "source-secret"


def test_sink_flags_add_pipelines_and_list_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubevents.yaml"
    config.write_text(PIPELINES_YAML)
    flag = "mysql:?root:secret@tcp(db:3306)/kube_eventer?charset=utf8"
    assert main(["--config", str(config), "pipelines", "--sink", flag]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == [
        "core",
        "all-events",
        "warnings",
        "copy",
        "mysql",
    ]
    assert "kubevents-sink-mysql" in out[-1] and "secret" not in "\n".join(out)


def test_pipeline_ids_must_be_unique(tmp_path: Path) -> None:
    config = tmp_path / "kubevents.yaml"
    config.write_text("pipelines: [{id: a, sink: kafka}, {id: a, sink: kafka}]")
    with pytest.raises(UserError, match="unique: a repeated"):
        load_settings(str(config)).sink_pipelines()


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/nonexistent.yaml", "config"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_replay_reads_list_array_and_ndjson() -> None:
    ev = core_event()
    as_list = json.dumps({"kind": "EventList", "items": [ev, ev]})
    assert len(list(read_events(io.StringIO(as_list), "x"))) == 2
    assert len(list(read_events(io.StringIO(json.dumps([ev])), "x"))) == 1
    ndjson = json.dumps(ev) + "\n\n" + json.dumps(ev) + "\n"
    assert len(list(read_events(io.StringIO(ndjson), "x"))) == 2
    with Path("examples/events.json").open() as fh:
        assert len(list(read_events(fh, "ex"))) == 3


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (json.dumps(core_event()) + "\n{broken\n", "x: line 2: invalid JSON"),
        (json.dumps({"items": [core_event(), {"kind": "Pod"}]}), "x: item 1: expected an Event"),
        (json.dumps({"items": [core_event(meta_uid="")]}), "x: item 0: Event without"),
        ("", "x: empty input"),
    ],
)
def test_replay_errors_name_the_place(text: str, where: str) -> None:
    with pytest.raises(UserError, match=where):
        list(read_events(io.StringIO(text), "x"))
