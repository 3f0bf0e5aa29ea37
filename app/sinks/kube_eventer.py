"""The CLI's ``--sink`` flag: kube-eventer's own sink URIs, so its users migrate by copying them.

``elasticsearch:``, ``mysql:`` and ``kafka:`` flags become pipeline declarations (dicts that
``PipelineSettings.model_validate`` accepts, holding only the options the flag gave, so the
``elasticsearch``/``mysql`` sections of the settings still fill in the rest). Parsing follows
kube-eventer's Go code (AliyunContainerService/kube-eventer: common/flags/flags.go,
common/elasticsearch/elasticsearch.go, common/kafka/kafka.go, common/mysql/mysql.go and the
go-sql-driver DSN syntax), so a flag means here what it meant there; where kube-eventer silently
dropped a half-given option (a user without a password, a cert without a key) this refuses it.
Errors are one line naming the flag by its position and never quote a value that may be secret.
docs/migrating-from-kube-eventer.md has the table of options.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from pydantic import ValidationError

from app.errors import UserError
from app.settings import PipelineSettings

log = logging.getLogger("kubevents.sink_flags")

SINKS = ("elasticsearch", "mysql", "kafka")
PLANNED = ("dingtalk", "wechat", "webhook", "influxdb")
# kube-eventer's other sinks (sinks/factory.go), and mns: not in that factory, but a name its
# users may bring.
ABSENT = ("honeycomb", "sls", "mns", "eventbridge", "log", "riemann", "mongo")

# kube-eventer option -> settings field, per sink: what the flag may carry, and the name an
# error about a field should use.
ES_OPTIONS = {
    "nodes": "url",
    "index": "index",
    "esUserName": "username",
    "esUserSecret": "password",
    "maxRetries": "max_retries",
    "healthCheck": "health_check",
    "sniff": "sniff",
    "startupHealthcheckTimeout": "startup_timeout_s",
    "bulkWorkers": "bulk_workers",
    "cluster_name": "cluster_name",
    "pipeline": "pipeline",
    "ver": "",
}
KAFKA_OPTIONS = {
    "brokers": "brokers",
    "eventstopic": "topic",
    "compression": "compression",
    "user": "sasl_username",
    "password": "sasl_password",
    "cacert": "ssl_cafile",
    "cert": "ssl_certfile",
    "key": "ssl_keyfile",
    "insecuressl": "ssl_insecure_skip_verify",
    "timeseriestopic": "",
}
MYSQL_OPTIONS = {"table": "table", "timeout": "connect_timeout_s"}

_OPTIONS = {"elasticsearch": ES_OPTIONS, "kafka": KAFKA_OPTIONS, "mysql": MYSQL_OPTIONS}
# strconv.ParseBool's spellings.
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
# go-sql-driver's readBool (utils.go), narrower: "t" is a TLS config's name there, not true.
_DSN_TRUE, _DSN_FALSE = {"1", "true", "TRUE", "True"}, {"0", "false", "FALSE", "False"}
# time.ParseDuration's units (micro: u, MICRO SIGN or GREEK MU).
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0}
_UNIT_S |= {"m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(" + "|".join(_UNIT_S) + ")")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")


def parse_sinks(
    flags: Sequence[str], *, environ: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One pipeline declaration per ``--sink`` flag, in order; the second pipeline of a kind is
    ``<kind>-2``, the third ``<kind>-3``."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, flag in enumerate(flags, start=1):
        declaration = parse_sink(flag, position, environ=environ)
        seen[declaration["sink"]] = n = seen.get(declaration["sink"], 0) + 1
        if n > 1:
            declaration["id"] = f"{declaration['sink']}-{n}"
        out.append(declaration)
    return out


def parse_sink(
    flag: str, position: int, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The pipeline declaration of one kube-eventer ``--sink`` value (``kind:uri``), with id
    ``kind``. ``position`` (1-based, among the --sink flags) names the flag in errors.
    ``$VAR``/``${VAR}`` are expanded from ``environ`` (default: os.environ), as kube-eventer
    does (os.ExpandEnv), so credentials can come from a Secret-backed variable."""
    kind, _, value = flag.partition(":")
    where = f"--sink #{position}"
    if kind not in SINKS:
        raise UserError(f"{where}: {_why_not(kind)}")
    where = f"{where} ({kind})"
    options: dict[str, Any]
    value = _expand(value, os.environ if environ is None else environ)
    # Go's url.Parse drops the fragment first: a '#' ended kube-eventer's URI too.
    uri = value.partition("#")[0]
    rest, _, raw_query = uri.partition("?")
    if kind == "mysql":
        options = _mysql(where, rest, raw_query)
    else:
        query = _parse_query(where, raw_query)
        known = ES_OPTIONS if kind == "elasticsearch" else KAFKA_OPTIONS
        # Refused below with their own reason, whatever their value (kube-eventer tested presence).
        refused = ("use_namespace", "sigv4") if kind == "elasticsearch" else ()
        unknown = [name for name in query if name not in known and name not in refused]
        if unknown:
            raise UserError(f"{where}: {_unknown(unknown[0], known)}")
        take = _Options(where, query)
        options = _elasticsearch(take, rest) if kind == "elasticsearch" else _kafka(take)
    declaration: dict[str, Any] = {"id": kind, "sink": kind, kind: options}
    try:
        PipelineSettings.model_validate(declaration)
    except ValidationError as exc:
        # Field names back to the flag's option names; msg, never the input (it may be secret).
        fields = {field: option for option, field in _OPTIONS[kind].items() if field}
        err = exc.errors()[0]
        field = str(err["loc"][-1])
        raise UserError(f"{where}: {fields.get(field, field)}=: {err['msg']}") from None
    return declaration


def _unknown(name: str, known: Mapping[str, str]) -> str:
    """Names an unknown option only when it looks like a typo of a known one: a secret with an
    '&' in it splits into an option too, and must not be printed."""
    listed = "known: " + ", ".join(f"{n}=" for n in known)
    close = difflib.get_close_matches(name, known, n=1)
    if close and _NAME.fullmatch(name):
        return f"unknown option {name}= (did you mean {close[0]}=? names are case-sensitive)"
    return f"an unknown option (its name not shown: it may be part of a secret); {listed}"


def _why_not(kind: str) -> str:
    have = "kubevents writes to elasticsearch, mysql and kafka"
    if kind in PLANNED:
        return f"kube-eventer's {kind} sink is not in kubevents yet (planned); {have}"
    if kind in ABSENT:
        return f"kubevents has no {kind} sink; {have}"
    shown = repr(kind) if _NAME.fullmatch(kind) else "in this flag"
    return f"unknown sink {shown}: the form is kind:uri, and {have}"


class _Options:
    """The flag's query options, taken one by one; a repeated or empty one is an error (Go took
    the first, or an empty value, and so hid a typo or an unset $VARIABLE)."""

    def __init__(self, where: str, query: dict[str, list[str]]):
        self.where, self.query = where, query

    def error(self, message: str) -> UserError:
        return UserError(f"{self.where}: {message}")

    def many(self, name: str) -> list[str]:
        values = self.query.get(name, [])
        if any(v == "" for v in values):
            raise self.error(f"{name}= has no value (an unset $VARIABLE?): give one or drop it")
        return values

    def one(self, name: str) -> str | None:
        values = self.many(name)
        if len(values) > 1:
            raise self.error(f"{name}= is given {len(values)} times: give it once")
        return values[0] if values else None

    def boolean(self, name: str) -> bool | None:
        value = self.one(name)
        if value is None or value in _GO_TRUE | _GO_FALSE:
            return None if value is None else value in _GO_TRUE
        raise self.error(f"{name}={value} is not a boolean: use true or false")

    def integer(self, name: str) -> int | None:
        value = self.one(name)
        if value is None or re.fullmatch(r"[+-]?[0-9]+", value):
            return None if value is None else int(value)
        raise self.error(f"{name}={value} is not an integer")


def _elasticsearch(take: _Options, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "use_namespace" in take.query:
        raise take.error(
            "use_namespace= (an index per namespace) is not supported: kubevents writes daily"
            " indices <index>-YYYY.MM.DD; declare one pipeline per namespace in the config file"
            " (filters.namespaces, its own index) or filter on namespace in queries"
        )
    if "sigv4" in take.query:
        raise take.error(
            "sigv4= (AWS request signing) is not supported: use esUserName=/esUserSecret= or an"
            " API key (KUBEVENTS_ELASTICSEARCH_API_KEY)"
        )
    version = take.integer("ver")
    if version is not None and version not in (8, 9):
        raise take.error(
            f"ver={version}: kubevents writes to Elasticsearch 8 and 9; upgrade the cluster or"
            " keep kube-eventer for it (ver=8 or ver=9, or no ver=, once upgraded)"
        )
    # nodes= replaces the URL, which then is often a dummy (kube-eventer's docs); without it
    # kube-eventer kept only the URL's scheme and host, dropping any credentials and path.
    credentials: tuple[str, str] | None = None
    nodes = take.many("nodes")
    if nodes:
        urls = []
        for node in nodes:
            node_url, userinfo = _es_node(take, node, "nodes=", keep_path=True)
            urls.append(node_url)
            credentials = credentials or userinfo
    elif url:
        node_url, userinfo = _es_node(take, url, "the URL", keep_path=False)
        if userinfo or urlsplit(url).path.strip("/"):
            log.warning(
                "%s: the URL's credentials or path are ignored, as kube-eventer ignored them:"
                " use esUserName=/esUserSecret=, or nodes= for a path",
                take.where,
            )
        urls = [node_url]
    else:
        raise take.error("no node: give the URL (elasticsearch:http://host:9200) or nodes=")
    out["url"] = ",".join(urls)
    user, secret = take.one("esUserName"), take.one("esUserSecret")
    if (user is None) != (secret is None):
        raise take.error("esUserName= and esUserSecret= go together: give both or neither")
    # olivere/elastic takes a node URL's user:password only when SetBasicAuth was not called.
    user, secret = (user, secret) if user is not None else credentials or (None, None)
    if user is not None:
        out["username"] = user
        if secret:
            out["password"] = secret
    for option in ("index", "cluster_name", "pipeline"):
        if (text := take.one(option)) is not None:
            out[option] = text
    for option, field in (("maxRetries", "max_retries"), ("bulkWorkers", "bulk_workers")):
        if (number := take.integer(option)) is not None:
            out[field] = number
    for option, field in (("healthCheck", "health_check"), ("sniff", "sniff")):
        if (flag := take.boolean(option)) is not None:
            out[field] = flag
    timeout = take.one("startupHealthcheckTimeout")
    if timeout is not None:
        # kube-eventer parses time.ParseDuration(value + "s"): seconds, "1.5" or even "1m30".
        seconds = _go_duration_s(timeout + "s")
        if seconds is None:
            raise take.error(f"startupHealthcheckTimeout={timeout} is not a number of seconds")
        out["startup_timeout_s"] = seconds
    if "index" not in out:
        log.warning(
            "%s: no index=, so events go to kubevents' k8s-events-YYYY.MM.DD (alias k8s-events),"
            " not kube-eventer's heapster-YYYY.MM.DD; set index= to choose",
            take.where,
        )
    return out


def _es_node(
    take: _Options, raw: str, what: str, *, keep_path: bool
) -> tuple[str, tuple[str, str] | None]:
    """A node URL without its credentials (returned apart, decoded) nor query, its port made
    explicit: the Go client defaulted to 80/443, elasticsearch-py wants one."""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise take.error(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise take.error(f"{what} must be an http:// or https:// URL with a host")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if port is None:
        hostport += ":443" if parts.scheme == "https" else ":80"
    credentials = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        credentials = (unquote(user), unquote(secret))
    path = parts.path.rstrip("/") if keep_path else ""
    return f"{parts.scheme}://{hostport}{path}", credentials


def _kafka(take: _Options) -> dict[str, Any]:
    out: dict[str, Any] = {}
    brokers = [b.strip() for value in take.many("brokers") for b in value.split(",") if b.strip()]
    if not brokers:
        raise take.error("no broker: give brokers=host:9092 (once per broker)")
    out["brokers"] = ",".join(brokers)
    if "timeseriestopic" in take.query:
        log.warning(
            "%s: timeseriestopic= is Heapster's metrics topic: kube-eventer ignored it for events,"
            " and so does kubevents",
            take.where,
        )
    topic = take.one("eventstopic")
    if topic is None:
        log.warning(
            "%s: no eventstopic=, so events go to kubevents' topic k8s-events-copy, not"
            " kube-eventer's heapster-events; set eventstopic= to choose",
            take.where,
        )
    else:
        out["topic"] = topic
    if (compression := take.one("compression")) is not None:
        out["compression"] = compression
    user, password = take.one("user"), take.one("password")
    if (user is None) != (password is None):
        raise take.error("user= and password= go together (SASL PLAIN): give both or neither")
    cafile, certfile, keyfile = take.one("cacert"), take.one("cert"), take.one("key")
    if (certfile is None) != (keyfile is None):
        raise take.error("cert= and key= go together (mutual TLS): give both or neither")
    # As kube-eventer (sarama): TLS when a CA or a client certificate is given; SASL is always
    # PLAIN there (no option for another mechanism).
    tls = cafile is not None or certfile is not None
    insecure = take.boolean("insecuressl")
    if insecure is not None and not tls:
        log.warning(
            "%s: insecuressl= has no effect without cacert= or cert=/key=: the connection has"
            " no TLS, as with kube-eventer",
            take.where,
        )
    if user is not None:
        out.update(sasl_mechanism="PLAIN", sasl_username=user, sasl_password=password)
    out["security_protocol"] = ("SASL_" if user is not None else "") + (
        "SSL" if tls else "PLAINTEXT"
    )
    for field, path in (("ssl_cafile", cafile), ("ssl_certfile", certfile)):
        if path is not None:
            out[field] = path
    if keyfile is not None:
        out["ssl_keyfile"] = keyfile
    if tls and insecure is not None:
        out["ssl_insecure_skip_verify"] = insecure
    return out


def _mysql(where: str, rest: str, raw_query: str) -> dict[str, Any]:
    """kube-eventer's ``mysql:?<go DSN>[&table=name]`` as a SQLAlchemy URL and a table."""

    def error(message: str) -> UserError:
        return UserError(
            f"{where}: {message} (the form is mysql:?user:password@tcp(host:3306)/database"
            "?charset=utf8&table=name)"
        )

    if rest or not raw_query:
        raise error("the Go DSN must follow mysql:?")
    out: dict[str, Any] = {}
    # common/mysql/mysql.go: with a table= option the DSN is what precedes the first '&', so
    # the DSN parameters after it were never used; without one the DSN is the whole query.
    table_values = [v for k, v in _pairs(raw_query) if k == "table"]
    dsn = raw_query
    if table_values and table_values[0]:
        out["table"] = table_values[0]
        dsn, _, dropped = raw_query.partition("&")
        ignored = [k for k, _ in _pairs(dropped) if k != "table"]
    else:
        ignored = []
        log.warning(
            "%s: no table=, so events go to kubevents' table k8s_events, not kube-eventer's"
            " kube_event (the columns differ); set table= to choose",
            where,
        )
    # go-sql-driver's ParseDSN: [user[:password]@][net[(addr)]]/dbname[?params]: the last '/',
    # the last '@' before it, the first ':' before that, the first '(' after it.
    slash = dsn.rfind("/")
    if slash < 0:
        raise error("the DSN has no /database")
    head, tail = dsn[:slash], dsn[slash + 1 :]
    at = head.rfind("@")
    userinfo, target = (head[:at], head[at + 1 :]) if at >= 0 else ("", head)
    user, _, password = userinfo.partition(":")
    net, paren, addr = target.partition("(")
    if paren and not addr.endswith(")"):
        raise error("the DSN's address is not closed by ')' before /database")
    net, addr = net or "tcp", addr[:-1]
    database, _, params = tail.partition("?")
    if not database:
        raise error("the DSN names no database")
    credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    credentials += "@" if credentials else ""
    if net == "unix":
        socket = quote(addr or "/tmp/mysql.sock", safe="/")
        out["url"] = f"mysql+pymysql://{credentials}/{database}?unix_socket={socket}"
    elif net in ("tcp", "tcp4", "tcp6"):
        host, port = _host_port(addr or "127.0.0.1:3306")
        if not port.isdigit():
            raise error("the DSN's port is not a number")
        out["url"] = f"mysql+pymysql://{credentials}{host}:{port}/{database}"
    else:
        raise error("the DSN's network must be tcp or unix")
    # Reported once the DSN parsed: a cut inside a password with an '&' fails above instead.
    if ignored:
        log.warning(
            "%s: DSN parameters after the first '&' are ignored with table=, as kube-eventer"
            " ignored them: %s",
            where,
            ", ".join(n for n in ignored if _NAME.fullmatch(n)) or "(unreadable)",
        )
    ignored = []
    for name, value in _pairs(params):
        # kubevents always talks utf8mb4 (utf8 is MySQL's 3-byte subset): charset=utf8 and any
        # collation are superseded, nothing is lost.
        if name in ("charset", "collation"):
            continue
        if name == "timeout":
            seconds = _go_duration_s(value)
            if seconds is None:
                raise error("the DSN's timeout= is not a positive Go duration such as 10s")
            out["connect_timeout_s"] = seconds
        elif name == "tls":
            out.update(_mysql_tls(where, value))
        else:
            ignored.append(name)
    if ignored:
        log.warning(
            "%s: DSN parameters %s are ignored: kubevents' MySQL client sets its own",
            where,
            ", ".join(n for n in ignored if _NAME.fullmatch(n)) or "(unreadable)",
        )
    return out


def _mysql_tls(where: str, value: str) -> dict[str, Any]:
    """go-sql-driver's tls= (dsn.go, then Config.normalize) as the MySQL sink's TLS settings, with
    the same meanings: true verifies the server's certificate and host name against the system
    CAs; skip-verify encrypts without checking; preferred encrypts when the server offers TLS,
    unchecked, and falls back to plain; false is plain. Any other value names a tls.Config the
    program registered in Go, which kube-eventer never does from its flags."""
    if value in _DSN_TRUE:
        return {"ssl_mode": "required", "ssl_verify_cert": True}
    if value in _DSN_FALSE:
        return {"ssl_mode": "disabled"}
    if value.lower() == "skip-verify":
        return {"ssl_mode": "required", "ssl_verify_cert": False}
    if value.lower() == "preferred":
        return {"ssl_mode": "preferred"}
    # A custom name may be anything: never quoted (it could be a pasted secret).
    raise UserError(
        f"{where}: the DSN's tls= names a custom TLS config, which kube-eventer cannot register:"
        " set the MySQL sink's ssl_ca, ssl_cert and ssl_key (KUBEVENTS_MYSQL_SSL_CA/_CERT/_KEY"
        " or the pipeline's mysql.ssl_*) instead, and drop tls= from the DSN"
    )


def _host_port(addr: str) -> tuple[str, str]:
    """host (IPv6 in brackets) and port of a Go address; port 3306 when it has none
    (go-sql-driver's ensureHavePort)."""
    if addr.startswith("[") and "]:" in addr:
        host, _, port = addr.rpartition(":")
        return host, port
    if addr.startswith("[") and addr.endswith("]"):
        return addr, "3306"
    if addr.count(":") == 1:
        host, _, port = addr.partition(":")
        return host, port
    return (f"[{addr}]" if ":" in addr else addr), "3306"


def _pairs(query: str) -> list[tuple[str, str]]:
    """A query's key=value pairs, unescaped leniently (Go's URL.Query(), which mysql.go uses,
    skips what it cannot read; so does the driver for DSN parameters)."""
    out = []
    for piece in query.split("&"):
        if piece and ";" not in piece:
            key, _, value = piece.partition("=")
            out.append((unquote_plus(key), unquote_plus(value)))
    return out


def _parse_query(where: str, raw: str) -> dict[str, list[str]]:
    """Go's url.ParseQuery, including its refusals (kube-eventer then dropped the sink)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise UserError(f"{where}: a '%' in the options is not followed by two hex digits")
    if any(";" in piece for piece in raw.split("&")):
        raise UserError(f"{where}: a ';' in the options: separate them with '&'")
    out: dict[str, list[str]] = {}
    for key, value in _pairs(raw):
        out.setdefault(key, []).append(value)
    return out


def _go_duration_s(text: str) -> float | None:
    """Seconds in a positive Go duration (time.ParseDuration: "10s", "1m30s", "1.5s"), else
    None."""
    text = text.removeprefix("+")
    if text == "0" or not re.fullmatch(f"(?:{_DURATION.pattern})+", text):
        return None
    return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))


def _expand(text: str, environ: Mapping[str, str]) -> str:
    """Go's os.ExpandEnv: $NAME and ${NAME} (unset: empty), $ before anything else kept;
    "${" without its "}" and "${}" are dropped."""
    special = "*#$@!?-0123456789"
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        rest = text[i + 1 :]
        if rest[0] == "{":
            close = rest.find("}")
            if len(rest) > 2 and rest[1] in special and rest[2] == "}":
                name, width = rest[1], 3
            elif close < 0 or close == 1:
                name, width = "", (1 if close < 0 else 2)
            else:
                name, width = rest[1:close], close + 1
        elif rest[0] in special:
            name, width = rest[0], 1
        else:
            match = re.match(r"[A-Za-z0-9_]*", rest)
            name = match.group() if match else ""
            width = len(name)
        if name:
            out.append(environ.get(name, ""))
        elif width == 0:
            out.append("$")
        i += 1 + width
    return "".join(out)
