"""kube-eventer's --sink flags (app/sinks/kube_eventer.py): each parses to the pipeline the same
YAML declaration gives. The examples are copied from kube-eventer's repository
(AliyunContainerService/kube-eventer), each citing its file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from app.errors import UserError
from app.settings import PipelineSettings, Settings
from app.sinks.kube_eventer import parse_sink, parse_sinks

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads KUBEVENTS_* (the stack's env adds default pipelines): none here."""
    import os

    for key in list(os.environ):
        if key.startswith("KUBEVENTS_"):
            monkeypatch.delenv(key)


def as_yaml(flag: str, declaration: str, environ: dict[str, str] | None = None) -> None:
    got = PipelineSettings.model_validate(parse_sink(flag, 1, environ=environ or {}))
    want = PipelineSettings.model_validate(yaml.safe_load(declaration))
    assert got.model_dump() == want.model_dump()


def error(flag: str, position: int = 1, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(UserError) as caught:
        parse_sink(flag, position, environ=environ or {})
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    return message


# --- Elasticsearch -------------------------------------------------------------------------


def test_docs_several_nodes() -> None:
    # docs/en/elasticsearch-sink.md
    as_yaml(
        "elasticsearch:?nodes=http://foo.com:9200&nodes=http://bar.com:9200",
        """
        id: elasticsearch
        sink: elasticsearch
        elasticsearch:
          url: http://foo.com:9200,http://bar.com:9200
        """,
    )


def test_docs_load_balancer_example_names_version_6() -> None:
    # docs/en/elasticsearch-sink.md: ver=6 is a cluster kubevents cannot write to.
    flag = "elasticsearch:http://elasticsearch.example.com:9200?sniff=false&ver=6"
    assert error(flag) == (
        "--sink #1 (elasticsearch): ver=6: kubevents writes to Elasticsearch 8 and 9; upgrade"
        " the cluster or keep kube-eventer for it (ver=8 or ver=9, or no ver=, once upgraded)"
    )
    as_yaml(
        flag.replace("ver=6", "ver=8"),
        """
        id: elasticsearch
        sink: elasticsearch
        elasticsearch: {url: "http://elasticsearch.example.com:9200", sniff: false}
        """,
    )


@pytest.mark.parametrize("version", ["2", "5", "7", "10"])
def test_versions_other_than_8_and_9_are_refused(version: str) -> None:
    message = error(f"elasticsearch:http://es:9200?ver={version}")
    assert f"ver={version}: kubevents writes to Elasticsearch 8 and 9" in message


def test_go_test_example_with_auth_and_tuning() -> None:
    # common/elasticsearch/elasticsearch_test.go (TestCreateElasticSearchServiceV2), at ver=9
    flag = (
        "elasticsearch:?nodes=https://foo.com:20468&nodes=https://bar.com:20468&"
        "esUserName=test&esUserSecret=password&maxRetries=10&startupHealthcheckTimeout=30&"
        "sniff=false&healthCheck=false&ver=9&cluster_name=sandbox"
    )
    as_yaml(
        flag,
        """
        id: elasticsearch
        sink: elasticsearch
        elasticsearch:
          url: https://foo.com:20468,https://bar.com:20468
          username: test
          password: password
          max_retries: 10
          startup_timeout_s: 30
          sniff: false
          health_check: false
          cluster_name: sandbox
        """,
    )
    assert "ver=2" in error(flag.replace("ver=9", "ver=2"))


def test_every_option() -> None:
    as_yaml(
        "elasticsearch:https://es.example.com:9243?index=kube-events&esUserName=writer&"
        f"esUserSecret={SECRET}&maxRetries=5&healthCheck=0&sniff=true&"
        "startupHealthcheckTimeout=2.5&ver=8&bulkWorkers=4&cluster_name=prod&pipeline=geoip",
        f"""
        id: elasticsearch
        sink: elasticsearch
        elasticsearch:
          url: https://es.example.com:9243
          index: kube-events
          username: writer
          password: {SECRET}
          max_retries: 5
          health_check: false
          sniff: true
          startup_timeout_s: 2.5
          bulk_workers: 4
          cluster_name: prod
          pipeline: geoip
        """,
    )


def test_declaration_holds_only_what_the_flag_gave() -> None:
    # So the elasticsearch section of the settings (KUBEVENTS_ELASTICSEARCH_*) fills in the rest.
    assert parse_sink("elasticsearch:http://es:9200?index=ev", 3, environ={}) == {
        "id": "elasticsearch",
        "sink": "elasticsearch",
        "elasticsearch": {"url": "http://es:9200", "index": "ev"},
    }
    settings = Settings(
        elasticsearch={"api_key": SECRET, "index": "other"},
        pipelines=parse_sinks(["elasticsearch:http://es:9200?index=ev"], environ={}),
    )
    (pipeline,) = settings.sink_pipelines()
    assert pipeline.elasticsearch is not None and pipeline.elasticsearch.index == "ev"
    assert pipeline.elasticsearch.api_key is not None


def test_ports_made_explicit_and_node_paths_and_credentials() -> None:
    # The Go client defaulted to port 80/443; a node URL's user:password was its basic auth.
    as_yaml(
        "elasticsearch:?nodes=https://elastic:p%40ss@es.example.com/proxy/&nodes=http://[::1]",
        """
        id: elasticsearch
        sink: elasticsearch
        elasticsearch:
          url: https://es.example.com:443/proxy,http://[::1]:80
          username: elastic
          password: p@ss
        """,
    )


def test_url_path_and_credentials_are_dropped_as_kube_eventer_did(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        as_yaml(
            f"elasticsearch:http://u:{SECRET}@es:9200/prefix?index=ev",
            "{id: elasticsearch, sink: elasticsearch, elasticsearch: {url: 'http://es:9200',"
            " index: ev}}",
        )
    assert "credentials or path are ignored" in caplog.text and SECRET not in caplog.text


def test_no_index_warns_where_events_go(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parse_sink("elasticsearch:http://es:9200", 1, environ={})
    assert "not kube-eventer's heapster-YYYY.MM.DD" in caplog.text


def test_environment_variables_are_expanded_as_kube_eventer_does() -> None:
    flag = "elasticsearch:http://$ES_HOST:9200?esUserName=w&esUserSecret=${ES_PASSWORD}"
    as_yaml(
        flag,
        f"{{id: elasticsearch, sink: elasticsearch, elasticsearch: {{url: 'http://es:9200',"
        f" username: w, password: {SECRET}}}}}",
        environ={"ES_HOST": "es", "ES_PASSWORD": SECRET},
    )
    assert error(flag, environ={"ES_HOST": "es"}) == (
        "--sink #1 (elasticsearch): esUserSecret= has no value (an unset $VARIABLE?): give one"
        " or drop it"
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"esUserSecret={SECRET}", "esUserName= and esUserSecret= go together"),
        ("use_namespace=false", "use_namespace= (an index per namespace) is not supported"),
        ("sigv4=true", "sigv4= (AWS request signing) is not supported"),
        ("bulkWorkers=0", "bulkWorkers=: Input should be greater than or equal to 1"),
        ("maxRetries=many", "maxRetries=many is not an integer"),
        ("sniff=yes", "sniff=yes is not a boolean: use true or false"),
        ("startupHealthcheckTimeout=1h", "startupHealthcheckTimeout=1h is not a number of"),
        ("index=a&index=b", "index= is given 2 times: give it once"),
        ("Index=ev", "unknown option Index= (did you mean index=? names are case-sensitive)"),
        (f"pass={SECRET};x", "a ';' in the options: separate them with '&'"),
        (f"esUserSecret={SECRET}%zz", "a '%' in the options is not followed by two hex digits"),
    ],
)
def test_elasticsearch_errors(query: str, expected: str) -> None:
    assert expected in error(f"elasticsearch:http://es:9200?{query}")


def test_elasticsearch_needs_a_node() -> None:
    assert "no node: give the URL" in error("elasticsearch:?index=ev")
    assert "must be an http:// or https:// URL" in error("elasticsearch:?nodes=es:9200")


# --- MySQL --------------------------------------------------------------------------------


def test_docs_mysql_example() -> None:
    # docs/en/mysql-sink.md. charset=utf8: kubevents always uses utf8mb4.
    as_yaml(
        "mysql:?root:transwarp@tcp(172.16.180.132:3306)/kube_eventer?charset=utf8&table=kube_event",
        """
        id: mysql
        sink: mysql
        mysql:
          url: mysql+pymysql://root:transwarp@172.16.180.132:3306/kube_eventer
          table: kube_event
        """,
    )


def test_mysql_password_quoted_socket_default_port_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    as_yaml(
        "mysql:?ev:p@ss:w/rd%@tcp(db.example.com)/events?timeout=1m30s&parseTime=true",
        """
        id: mysql
        sink: mysql
        mysql:
          url: mysql+pymysql://ev:p%40ss%3Aw%2Frd%25@db.example.com:3306/events
          connect_timeout_s: 90
        """,
    )
    assert "DSN parameters parseTime are ignored" in caplog.text
    assert "not kube-eventer's kube_event" in caplog.text
    as_yaml(
        "mysql:?root@unix(/var/run/mysqld/mysqld.sock)/kube_eventer&table=k8s_event",
        """
        id: mysql
        sink: mysql
        mysql:
          url: mysql+pymysql://root@/kube_eventer?unix_socket=/var/run/mysqld/mysqld.sock
          table: k8s_event
        """,
    )


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"root:{SECRET}@tcp(db:3306)", "the DSN has no /database"),
        (f"root:{SECRET}@tcp(db:3306/kube_eventer", "the DSN's address is not closed by ')'"),
        (f"root:{SECRET}@tcp(db:3306)/", "the DSN names no database"),
        (f"root:{SECRET}@tcp(db:mysql)/ev", "the DSN's port is not a number"),
        (f"root:{SECRET}@cloudsql(p:r:i)/ev", "the DSN's network must be tcp or unix"),
        (f"root:{SECRET}@tcp(db)/ev?timeout=5", "the DSN's timeout= is not a positive Go"),
    ],
)
def test_bad_dsn(dsn: str, expected: str) -> None:
    message = error(f"mysql:?{dsn}&table=ev")
    assert message.startswith(f"--sink #1 (mysql): {expected}")
    assert message.endswith(
        "(the form is mysql:?user:password@tcp(host:3306)/database?charset=utf8&table=name)"
    )


def test_dsn_must_follow_the_question_mark() -> None:
    # kube-eventer's Go url.Parse read "root:..." as a URL scheme and so connected to localhost.
    assert "the Go DSN must follow mysql:?" in error(f"mysql:root:{SECRET}@tcp(db)/ev")
    assert "the Go DSN must follow mysql:?" in error("mysql:")


@pytest.mark.parametrize(
    ("tls", "yaml_options"),
    [
        # go-sql-driver: true verifies certificate and host name against the system CAs
        ("true", "{ssl_mode: required, ssl_verify_cert: true}"),
        ("1", "{ssl_mode: required, ssl_verify_cert: true}"),
        ("skip-verify", "{ssl_mode: required, ssl_verify_cert: false}"),
        ("Skip-Verify", "{ssl_mode: required, ssl_verify_cert: false}"),  # case-insensitive
        ("preferred", "{ssl_mode: preferred}"),
        ("false", "{ssl_mode: disabled}"),
        ("0", "{ssl_mode: disabled}"),
    ],
)
def test_mysql_tls_keeps_its_meaning(tls: str, yaml_options: str) -> None:
    as_yaml(
        f"mysql:?u:p@tcp(db:3307)/ev?tls={tls}&table=t",
        f"""
        id: mysql
        sink: mysql
        mysql: {{url: 'mysql+pymysql://u:p@db:3307/ev', table: t, {yaml_options.strip("{}")}}}
        """,
    )


def test_mysql_tls_true_resolves_to_verified_tls() -> None:
    """What the sink does with it: TLS required, certificate and host name checked."""
    from sqlalchemy.engine import make_url

    from app.sinks.mysql_tls import TLS, resolve

    (pipeline,) = Settings(
        pipelines=parse_sinks(["mysql:?u:p@tcp(db:3307)/ev?tls=true"], environ={})
    ).sink_pipelines()
    assert pipeline.mysql is not None and pipeline.mysql.url is not None
    url = make_url(pipeline.mysql.url.get_secret_value())
    assert resolve(pipeline.mysql, url)[1] == TLS("required", None, None, None, True, True)


@pytest.mark.parametrize("name", ["custom", "t", "rds%2Dca"])
def test_mysql_tls_custom_config_names_the_settings(name: str) -> None:
    assert error(f"mysql:?root:{SECRET}@tcp(db)/ev?tls={name}&table=t") == (
        "--sink #1 (mysql): the DSN's tls= names a custom TLS config, which kube-eventer cannot"
        " register: set the MySQL sink's ssl_ca, ssl_cert and ssl_key"
        " (KUBEVENTS_MYSQL_SSL_CA/_CERT/_KEY or the pipeline's mysql.ssl_*) instead, and drop"
        " tls= from the DSN"
    )


def test_mysql_tls_after_the_first_ampersand_is_dropped_as_by_kube_eventer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # common/mysql/mysql.go cut the DSN at the first '&' when table= was given: kube-eventer
    # connected without TLS, and so does the pipeline this declares (with a warning).
    as_yaml(
        "mysql:?u:p@tcp(db)/ev?charset=utf8&table=t&tls=true",
        "{id: mysql, sink: mysql, mysql: {url: 'mysql+pymysql://u:p@db:3306/ev', table: t}}",
    )
    assert "ignored with table=" in caplog.text and "tls" in caplog.text


# --- Kafka --------------------------------------------------------------------------------


def test_docs_kafka_examples(caplog: pytest.LogCaptureFixture) -> None:
    # docs/en/kafka-sink.md, both examples. The first names only Heapster's metrics topic, so
    # kube-eventer wrote events to its default topic: kubevents to its own default, and says so.
    with caplog.at_level(logging.WARNING):
        as_yaml(
            "kafka:?brokers=localhost:9092&brokers=localhost:9093&timeseriestopic=testseries",
            """
            id: kafka
            sink: kafka
            kafka: {brokers: "localhost:9092,localhost:9093"}
            """,
        )
    assert "timeseriestopic= is Heapster's metrics topic" in caplog.text
    assert "not kube-eventer's heapster-events" in caplog.text
    as_yaml(
        "kafka:?brokers=localhost:9092&brokers=localhost:9093&eventstopic=testtopic",
        """
        id: kafka
        sink: kafka
        kafka:
          brokers: localhost:9092,localhost:9093
          topic: testtopic
        """,
    )


def test_kafka_sasl_and_mutual_tls() -> None:
    as_yaml(
        f"kafka:?brokers=k1:9093&eventstopic=ev&compression=gzip&user=eventer&password={SECRET}"
        "&cacert=/tls/ca.pem&cert=/tls/client.pem&key=/tls/client.key&insecuressl=true",
        f"""
        id: kafka
        sink: kafka
        kafka:
          brokers: k1:9093
          topic: ev
          compression: gzip
          security_protocol: SASL_SSL
          sasl_mechanism: PLAIN
          sasl_username: eventer
          sasl_password: {SECRET}
          ssl_cafile: /tls/ca.pem
          ssl_certfile: /tls/client.pem
          ssl_keyfile: /tls/client.key
          ssl_insecure_skip_verify: true
        """,
    )


@pytest.mark.parametrize(
    ("query", "protocol"),
    [
        (f"user=u&password={SECRET}", "SASL_PLAINTEXT"),
        ("cacert=/ca.pem", "SSL"),
        ("cert=/c.pem&key=/c.key", "SSL"),
        ("", "PLAINTEXT"),
    ],
)
def test_kafka_security_protocol(query: str, protocol: str) -> None:
    declaration = parse_sink(f"kafka:?brokers=k:9092&eventstopic=t&{query}", 1, environ={})
    assert declaration["kafka"]["security_protocol"] == protocol


def test_insecuressl_alone_means_no_tls_as_in_kube_eventer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        declaration = parse_sink("kafka:?brokers=k:9092&eventstopic=t&insecuressl=true", 1)
    assert declaration["kafka"]["security_protocol"] == "PLAINTEXT"
    assert "ssl_insecure_skip_verify" not in declaration["kafka"]
    assert "insecuressl= has no effect without cacert=" in caplog.text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "no broker: give brokers=host:9092"),
        (f"brokers=k:9092&password={SECRET}", "user= and password= go together"),
        ("brokers=k:9092&cert=/c.pem", "cert= and key= go together (mutual TLS)"),
        ("brokers=k:9092&compression=brotli", "compression=: Input should be 'none', 'gzip'"),
        ("brokers=k:9092&eventsTopic=ev", "unknown option eventsTopic= (did you mean eventst"),
        ("brokers=k:9092&mechanism=SCRAM-SHA-512", "an unknown option (its name not shown"),
    ],
)
def test_kafka_errors(query: str, expected: str) -> None:
    assert expected in error(f"kafka:?{query}")


# --- Sinks, ids, secrets ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dingtalk", "wechat", "webhook", "influxdb"])
def test_planned_sinks_say_not_yet(kind: str) -> None:
    assert error(f"{kind}:https://hook?token={SECRET}", 2) == (
        f"--sink #2: kube-eventer's {kind} sink is not in kubevents yet (planned); kubevents"
        " writes to elasticsearch, mysql and kafka"
    )


@pytest.mark.parametrize("kind", ["honeycomb", "sls", "mns", "eventbridge", "log", "mongo"])
def test_other_kube_eventer_sinks(kind: str) -> None:
    assert error(f"{kind}:?x=1") == (
        f"--sink #1: kubevents has no {kind} sink; kubevents writes to elasticsearch, mysql and"
        " kafka"
    )


def test_unknown_sink() -> None:
    assert error("elasticseach:http://es:9200") == (
        "--sink #1: unknown sink 'elasticseach': the form is kind:uri, and kubevents writes to"
        " elasticsearch, mysql and kafka"
    )
    assert "unknown sink 'http'" in error(f"http://u:{SECRET}@es:9200")
    assert "unknown sink in this flag" in error(f"{SECRET}&x:1")


def test_ids_by_kind_with_suffixes() -> None:
    declarations = parse_sinks(
        [
            "elasticsearch:http://a:9200?index=a",
            "mysql:?u:p@tcp(db)/ev&table=ev",
            "elasticsearch:http://b:9200?index=b",
            "elasticsearch:http://c:9200?index=c",
        ],
        environ={},
    )
    ids = [d["id"] for d in declarations]
    assert ids == ["elasticsearch", "mysql", "elasticsearch-2", "elasticsearch-3"]
    pipelines = Settings(pipelines=declarations).sink_pipelines()
    assert [p.id for p in pipelines] == ids


def test_position_names_the_flag() -> None:
    with pytest.raises(UserError, match=r"^--sink #2 \(kafka\): no broker"):
        parse_sinks(["kafka:?brokers=k:9092&eventstopic=t", "kafka:?eventstopic=t"], environ={})


def test_secret_never_in_error_messages() -> None:
    # error() asserts it; these put the secret where a careless message would quote it.
    flags: list[str] = [
        f"mysql:?root:{SECRET}@tcp(db:3306)/ev?tls=custom{SECRET}",
        f"mysql:?root:{SECRET}@tcp(db:3306/ev",
        f"elasticsearch:http://es:9200?esUserName=u&esUserSecret={SECRET}&ver=7",
        f"elasticsearch:?nodes=http://u:{SECRET}@es:port",
        f"kafka:?brokers=k:9092&password={SECRET}&compression={SECRET}",
        f"kafka:?brokers=k:9092&user=u&password=a&{SECRET}=1",
    ]
    messages = [error(flag) for flag in flags]
    assert all(m.startswith("--sink #1") for m in messages)


def test_migration_doc_worked_example() -> None:
    # docs/migrating-from-kube-eventer.md: its kubevents flags declare its YAML's pipelines.
    doc = (Path(__file__).parents[3] / "docs/migrating-from-kube-eventer.md").read_text()
    example = doc.split("## Worked example", 1)[1]
    blocks = example.split("```")
    flags = [line.removeprefix("- --sink=") for line in blocks[3].strip().splitlines()]
    environ = {"ES_PASSWORD": "es-pw", "MYSQL_PASSWORD": "my-pw"}
    got = [PipelineSettings.model_validate(d) for d in parse_sinks(flags, environ=environ)]
    declared = yaml.safe_load(blocks[5].removeprefix("yaml"))["pipelines"]
    want = [PipelineSettings.model_validate(d) for d in declared]
    assert [p.model_dump() for p in got] == [p.model_dump() for p in want]
    old = [line.removeprefix("- --sink=") for line in blocks[1].strip().splitlines()]
    assert "ver=7" in error(old[0], environ=environ)
