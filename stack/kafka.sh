#!/usr/bin/env bash
# Apache Kafka, single KRaft node (broker + controller), run from Maven Central jars.
# Usage: stack/kafka.sh install|start|wait|stop|status|env
# Listeners (all 127.0.0.1): PLAINTEXT 9092 (default, inter-broker), controller 9093, SASL_SSL 9094
# (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and SSL 9095 with required client certificates; the last
# two exist so the Kafka security options are tested against a real broker.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# 4.1.2 passed a faust-streaming 0.15.3 + aiokafka 0.14.0 smoke test (tables, changelog recovery,
# exactly_once); 3.9.2 passed it too and stays selectable: KAFKA_VERSION=3.9.2 stack/kafka.sh start.
# Switching versions wipes the broker's data (a log dir cannot be downgraded).
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
# Kafka 4.x's poms bring log4j2 but no slf4j binding (its tarball adds one): without it the broker
# logs nothing. 2.25.3 is the log4j2 that kafka 4.1.2 depends on. 3.x logs through reload4j.
LOG4J2_VERSION="${LOG4J2_VERSION:-2.25.3}"
RELOAD4J_VERSION=1.2.25
SLF4J_VERSION=1.7.36

HOME_DIR="$CACHE/kafka/$KAFKA_VERSION"
DATA_DIR="$DATA/kafka"
CONF_DIR="$DATA_DIR/config"
LOG_DIRS="$DATA_DIR/log"
# Fixed cluster id (base64url of "kubevents-kafka1"): formatting is reproducible.
CLUSTER_ID="a3ViZXZlbnRzLWthZmthMQ"
# Overridable so that a private copy of the broker can run beside the shared one.
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9094}"
MTLS_PORT="${KAFKA_MTLS_PORT:-9095}"
# Outside DATA_DIR: a version switch wipes the data, not the certificates.
TLS_DIR="$STATE/kafka-tls"
# Throwaway credentials of a broker bound to 127.0.0.1; one user for all three mechanisms.
SASL_USER=kubevents
SASL_PASSWORD=kubevents-stack-secret
SCRAM_CONFIG="SCRAM-SHA-256=[password=$SASL_PASSWORD],SCRAM-SHA-512=[password=$SASL_PASSWORD]"

is_4x() { [[ "${KAFKA_VERSION%%.*}" -ge 4 ]]; }

install() {
  [[ -f "$HOME_DIR/.installed" ]] && return 0
  mkdir -p "$HOME_DIR"
  # stack/kafka-cluster.sh installs the same jars, and make stack runs installs in parallel: one
  # fetches, the other waits for it and finds them installed.
  local lock
  exec {lock}>"$HOME_DIR/.install.lock"
  flock "$lock"
  [[ -f "$HOME_DIR/.installed" ]] || fetch_jars
  exec {lock}>&-  # not inherited by the broker started next
}

fetch_jars() {
  log "kafka $KAFKA_VERSION: fetching jars through Maven (first run only)"
  local logging
  if is_4x; then
    logging="
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J2_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J2_VERSION</version></dependency>"
  else
    logging="
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>$RELOAD4J_VERSION</version></dependency>"
  fi
  # Throwaway pom: only there to let Maven resolve kafka's runtime classpath.
  cat >"$HOME_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kubevents.stack</groupId><artifactId>kafka-runtime</artifactId><version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>$logging
  </dependencies>
</project>
EOF
  rm -rf "$HOME_DIR/libs"
  mvn -q -B -f "$HOME_DIR/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$HOME_DIR/libs" >"$HOME_DIR/mvn.log" 2>&1 \
    || { cat "$HOME_DIR/mvn.log" >&2; die "could not fetch kafka $KAFKA_VERSION (see $HOME_DIR/mvn.log)"; }
  touch "$HOME_DIR/.installed"
}

# A throwaway CA, a broker certificate for 127.0.0.1/localhost and a client certificate, made once
# (openssl takes about a second; later starts reuse them until a month before they expire).
make_certs() {
  local fresh=1 f
  for f in ca.pem broker.pem client.pem; do
    openssl x509 -checkend 2592000 -noout -in "$TLS_DIR/$f" >/dev/null 2>&1 || fresh=0
  done
  [[ -f "$TLS_DIR/broker-keystore.pem" && -f "$TLS_DIR/client.key" ]] || fresh=0
  ((fresh)) && return 0
  log "kafka: generating a throwaway CA and TLS certificates in $TLS_DIR"
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=kubevents stack CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    sign() {  # sign NAME SUBJECT EXTENSIONS
      openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" "$3" >"$1.ext"
      openssl x509 -req -sha256 -days 825 -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile "$1.ext" -out "$1.pem"
      rm -f "$1.csr" "$1.ext"
    }
    # Clients check the host name: the broker's certificate must name 127.0.0.1 (SAN, not CN).
    sign broker "/CN=localhost" $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
    sign client "/CN=kubevents-client" "extendedKeyUsage=clientAuth"
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key and the certificate in one file.
    cat broker.key broker.pem >broker-keystore.pem
    chmod 600 ./*.key broker-keystore.pem
  ) >>"$LOGS/kafka.log" 2>&1 || die "kafka: certificate generation failed (see $LOGS/kafka.log)"
}

write_config() {
  mkdir -p "$CONF_DIR" "$LOG_DIRS"
  cat >"$CONF_DIR/server.properties" <<EOF
# Generated by stack/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$MTLS_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$MTLS_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$LOG_DIRS

# Secured listeners, only for clients (the broker and controller talk PLAINTEXT). PEM stores, so no
# keytool. SASL_SSL: PLAIN users are listed here, SCRAM users live in the cluster metadata.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1

# Tests: no 3 s wait before the first rebalance, fewer offsets partitions to load.
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=10
auto.create.topics.enable=true
num.partitions=4

# Small machine: the cleaner's dedupe buffer defaults to 128 MiB of heap.
log.cleaner.dedupe.buffer.size=33554432
num.network.threads=2
num.io.threads=4
EOF
  write_log_config "$CONF_DIR"
}

# write_log_config DIR: the broker's logging setup (also used by stack/kafka-cluster.sh's nodes).
write_log_config() {
  if is_4x; then
    cat >"$1/log4j2.properties" <<'EOF'
# Everything to stdout (start_bg sends it to .stack/logs/kafka.log).
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# Per-request and per-segment chatter.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.raft.name = org.apache.kafka.raft
logger.raft.level = WARN
logger.storage.name = org.apache.kafka.storage.internals.log
logger.storage.level = WARN
logger.unified.name = kafka.log.UnifiedLog
logger.unified.level = WARN
logger.logmanager.name = kafka.log.LogManager
logger.logmanager.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.utils.name = org.apache.kafka.common.utils.AppInfoParser
logger.utils.level = WARN
logger.partition.name = kafka.cluster.Partition
logger.partition.level = WARN
logger.partitionchange.name = org.apache.kafka.controller.PartitionChangeBuilder
logger.partitionchange.level = WARN
logger.txn.name = kafka.coordinator.transaction
logger.txn.level = WARN
EOF
  else
    cat >"$1/log4j.properties" <<'EOF'
# Everything to stdout (start_bg sends it to .stack/logs/kafka.log).
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.log.UnifiedLog=WARN
log4j.logger.kafka.log.LogManager=WARN
log4j.logger.org.apache.kafka.common.config.AbstractConfig=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
log4j.logger.kafka.cluster.Partition=WARN
log4j.logger.org.apache.kafka.controller.PartitionChangeBuilder=WARN
log4j.logger.kafka.coordinator.transaction=WARN
# 3.x dumps every broker setting at start-up.
log4j.logger.kafka.server.KafkaConfig=WARN
EOF
  fi
}

# java_opts [CONF_DIR [HEAP_MB]]: JVM flags, logging set up from CONF_DIR (default: this broker's).
java_opts() {
  local conf="${1:-$CONF_DIR}" heap="${2:-512}"
  local opts=("-Xms$((heap / 2))m" "-Xmx${heap}m" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true)
  if is_4x; then opts+=("-Dlog4j2.configurationFile=$conf/log4j2.properties")
  else opts+=("-Dlog4j.configuration=file:$conf/log4j.properties"); fi
  printf '%s\n' "${opts[@]}"
}

start() {
  install
  is_running kafka && { log "kafka already running (pid $(cat "$RUN/kafka.pid"))"; return 0; }
  port_open "$PORT" && die "port $PORT is taken by another process"
  port_open "$CONTROLLER_PORT" && die "port $CONTROLLER_PORT is taken by another process"
  port_open "$SASL_SSL_PORT" && die "port $SASL_SSL_PORT is taken by another process"
  port_open "$MTLS_PORT" && die "port $MTLS_PORT is taken by another process"
  # A log dir formatted by another Kafka version may not be readable (no downgrades): start afresh.
  if [[ -f "$DATA_DIR/.version" && "$(cat "$DATA_DIR/.version")" != "$KAFKA_VERSION" ]]; then
    log "kafka data was written by $(cat "$DATA_DIR/.version"), now $KAFKA_VERSION: wiping $DATA_DIR"
    rm -rf "$DATA_DIR"
  fi
  make_certs
  write_config
  local opts; mapfile -t opts < <(java_opts)
  if [[ ! -f "$LOG_DIRS/meta.properties" ]]; then
    log "kafka: formatting storage (cluster id $CLUSTER_ID)"
    # A fresh log dir gets its SCRAM users at format time (no extra JVM run after start).
    java "${opts[@]}" -cp "$HOME_DIR/libs/*" kafka.tools.StorageTool format \
      -t "$CLUSTER_ID" -c "$CONF_DIR/server.properties" \
      --add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]" >>"$LOGS/kafka.log" 2>&1 \
      || { tail -n 20 "$LOGS/kafka.log" >&2; die "kafka storage format failed"; }
    echo "$KAFKA_VERSION" >"$DATA_DIR/.version"
    echo "$SASL_USER $SCRAM_CONFIG" >"$DATA_DIR/.scram-users"
  fi
  start_bg kafka java "${opts[@]}" -cp "$HOME_DIR/libs/*" kafka.Kafka "$CONF_DIR/server.properties"
}

# Ready = the broker answers a Metadata request listing itself (KRaft registers and unfences the
# broker before that). Plain sockets so that no client library is needed.
probe() {
  python3 - "$PORT" <<'EOF'
import socket, struct, sys

def call(sock, api_key, version, body=b""):
    client = b"stack-probe"
    req = struct.pack(">hhih", api_key, version, 7, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(req)) + req)
    size = struct.unpack(">i", recv(sock, 4))[0]
    return recv(sock, size)

def recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf

with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as s:
    # ApiVersions v0: every broker answers it, even with UNSUPPORTED_VERSION.
    r = call(s, 18, 0)
    _, _, n = struct.unpack(">ihi", r[:10])
    apis = {k: (lo, hi) for k, lo, hi in (struct.unpack(">hhh", r[10 + 6 * i:16 + 6 * i]) for i in range(n))}
    lo, hi = apis[3]
    v = min(hi, 8)  # v9+ is the flexible encoding; 1..8 parse alike up to controller_id
    if v < max(lo, 1):
        raise SystemExit("no usable Metadata version")
    body = struct.pack(">i", -1)  # all topics
    if v >= 4:
        body += b"\x00"  # allow_auto_topic_creation
    if v >= 8:
        body += b"\x00\x00"
    r = call(s, 3, v, body)
    off = 4 + (4 if v >= 3 else 0)
    (nbrokers,) = struct.unpack(">i", r[off:off + 4])
    if nbrokers < 1:
        raise SystemExit("no broker registered yet")
print("ok")
EOF
}

# A log dir formatted before the SCRAM users existed (or with other passwords) gets them through
# the Admin API once the broker is up; the marker makes later starts skip this JVM run.
ensure_scram_users() {
  local marker="$DATA_DIR/.scram-users"
  [[ "$(cat "$marker" 2>/dev/null)" == "$SASL_USER $SCRAM_CONFIG" ]] && return 0
  log "kafka: creating SCRAM user $SASL_USER"
  local opts mechanism; mapfile -t opts < <(java_opts)
  # One mechanism per request: KRaft refuses two credentials of one user in the same request.
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    java "${opts[@]}" -cp "$HOME_DIR/libs/*" kafka.admin.ConfigCommand \
      --bootstrap-server "127.0.0.1:$PORT" --alter --entity-type users --entity-name "$SASL_USER" \
      --add-config "$mechanism=[password=$SASL_PASSWORD]" >>"$LOGS/kafka.log" 2>&1 \
      || { tail -n 20 "$LOGS/kafka.log" >&2; die "kafka: could not create SCRAM user $SASL_USER"; }
  done
  echo "$SASL_USER $SCRAM_CONFIG" >"$marker"
}

# Sourced (stack/kafka-cluster.sh reuses the install, version and logging setup): define only.
[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0

case "${1:-}" in
  install) install ;;
  start) start ;;
  wait) wait_for kafka "${KAFKA_WAIT_TIMEOUT:-120}" probe && ensure_scram_users ;;
  stop) stop_bg kafka ;;
  status)
    if is_running kafka && probe >/dev/null 2>&1; then echo "kafka $KAFKA_VERSION: ready (pid $(cat "$RUN/kafka.pid"))"
    elif is_running kafka; then echo "kafka $KAFKA_VERSION: starting (pid $(cat "$RUN/kafka.pid"))"
    else echo "kafka: stopped"; exit 1; fi ;;
  env)
    echo "export KUBEVENTS_KAFKA_BROKERS=127.0.0.1:$PORT"
    # For tests/integration/test_kafka_security.py (not read by kubevents itself).
    echo "export KUBEVENTS_TEST_KAFKA_SASL_SSL=127.0.0.1:$SASL_SSL_PORT"
    echo "export KUBEVENTS_TEST_KAFKA_MTLS=127.0.0.1:$MTLS_PORT"
    echo "export KUBEVENTS_TEST_KAFKA_CA=$TLS_DIR/ca.pem"
    echo "export KUBEVENTS_TEST_KAFKA_CLIENT_CERT=$TLS_DIR/client.pem"
    echo "export KUBEVENTS_TEST_KAFKA_CLIENT_KEY=$TLS_DIR/client.key"
    echo "export KUBEVENTS_TEST_KAFKA_SASL_USERNAME=$SASL_USER"
    echo "export KUBEVENTS_TEST_KAFKA_SASL_PASSWORD=$SASL_PASSWORD" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
