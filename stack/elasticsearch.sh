#!/usr/bin/env bash
# Elasticsearch 8.x, single node, from Elastic's integ-test-zip on Maven Central.
# Usage: stack/elasticsearch.sh install|start|wait|stop|status|env
# That zip is the server core plus only the transport-netty4, apm, x-pack-core and x-pack-security
# modules. Index/bulk/search/aggregations, index templates and data streams work; these do not:
# GET / and HEAD / (client.info() raises 405, client.ping() is False: use cluster.health),
# painless scripts, _update_by_query/_delete_by_query/_reindex, ingest pipelines' processors.
source "$(dirname "$0")/lib.sh"

ES_VERSION="${ES_VERSION:-8.19.21}"
ES_USER=kubevents  # Elasticsearch refuses to run as root
PORT=9200
TRANSPORT_PORT=9300

ES_HOME="$CACHE/elasticsearch/$ES_VERSION/elasticsearch-$ES_VERSION"
DATA_DIR="$DATA/elasticsearch"
ES_STATE="$STATE/elasticsearch"  # config copy (ES writes its keystore there), tmp, server pid file
CONF_DIR="$ES_STATE/config"
SERVER_PID="$ES_STATE/server.pid"
ES_LOGS="$LOGS/elasticsearch"  # ES's own files; its console output goes to $LOGS/elasticsearch.log

as_root() { [[ "$(id -u)" == 0 ]]; }

install() {
  [[ -f "$ES_HOME/.installed" ]] && return 0
  log "elasticsearch $ES_VERSION: fetching and unpacking the zip (first run only)"
  local tmp
  tmp="$(mktemp -d)"
  rm -rf "$CACHE/elasticsearch/$ES_VERSION"
  # Run from a scratch dir: without a pom, unpack drops a literal '${project.basedir}/target' marker
  # dir into the current directory.
  (cd "$tmp" && mvn -B -q dependency:unpack \
    -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" \
    -DoutputDirectory="$CACHE/elasticsearch/$ES_VERSION" >mvn.log 2>&1) \
    || { cat "$tmp/mvn.log" >&2; rm -rf "$tmp"; die "could not fetch elasticsearch $ES_VERSION"; }
  rm -rf "$tmp"
  [[ -x "$ES_HOME/bin/elasticsearch" ]] || die "unexpected layout in $CACHE/elasticsearch/$ES_VERSION"
  touch "$ES_HOME/.installed"
}

# The ES user must reach the cache (under /root, mode 700) and the checkout. Walk down from / and give
# it an execute-only ACL entry on just the directories it cannot pass (not on the others: a named-user
# entry would override their "other" r-x and the JVM needs to read its working directory).
grant_traverse() {
  local dir="" part
  IFS=/ read -ra parts <<<"${1#/}"
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    runuser -u "$ES_USER" -- test -x "$dir" && continue
    command -v setfacl >/dev/null || apt-get install -y -q acl >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q acl >&2; }
    log "granting $ES_USER traverse-only access (ACL u:$ES_USER:x) on $dir"
    setfacl -m "u:$ES_USER:x" "$dir"
  done
}

prepare() {
  # Own temp dir, emptied per start: ES otherwise leaves an elasticsearch-*/ dir and two
  # final-flags* files in /tmp on every start.
  rm -rf "$ES_STATE/tmp"
  mkdir -p "$DATA_DIR" "$ES_STATE/tmp" "$ES_LOGS"
  # Fresh config copy per version; ES may write into it (keystore), so it is not the cache's copy.
  if [[ ! -f "$ES_STATE/.version" || "$(cat "$ES_STATE/.version")" != "$ES_VERSION" ]]; then
    rm -rf "$CONF_DIR"
    cp -r "$ES_HOME/config" "$CONF_DIR"
    echo "$ES_VERSION" >"$ES_STATE/.version"
  fi
  if as_root; then
    id -u "$ES_USER" >/dev/null 2>&1 || {
      log "creating system user $ES_USER"
      useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$ES_USER"
    }
    chown -R "$ES_USER:" "$DATA_DIR" "$ES_STATE" "$ES_LOGS"
    for d in "$ES_HOME" "$DATA_DIR" "$ES_STATE" "$ES_LOGS"; do grant_traverse "$d"; done
    runuser -u "$ES_USER" -- test -r "$ES_HOME/lib/elasticsearch-$ES_VERSION.jar" \
      || die "$ES_USER cannot read $ES_HOME"
  fi
}

java_home() {
  if [[ -n "${ES_JAVA_HOME:-}" ]]; then echo "$ES_JAVA_HOME"; return; fi
  # 8.x runs on 17+; prefer the system Java 17 over newer JDKs that 8.x has not been tested with.
  if [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]]; then echo /usr/lib/jvm/java-17-openjdk-amd64; return; fi
  dirname "$(dirname "$(readlink -f "$(command -v java)")")"
}

start() {
  install
  is_running elasticsearch && { log "elasticsearch already running (pid $(cat "$RUN/elasticsearch.pid"))"; return 0; }
  port_open "$PORT" && die "port $PORT is taken by another process"
  port_open "$TRANSPORT_PORT" && die "port $TRANSPORT_PORT is taken by another process"
  prepare
  rm -f "$SERVER_PID"
  ulimit -n 65535 2>/dev/null || true  # ES warns below 65535 open files (where the hard limit allows)
  local cmd=(env ES_JAVA_HOME="$(java_home)" ES_PATH_CONF="$CONF_DIR"
    ES_TMPDIR="$ES_STATE/tmp" CLI_JAVA_OPTS="-Djava.io.tmpdir=$ES_STATE/tmp"
    ES_JAVA_OPTS="${ES_JAVA_OPTS:--Xms512m -Xmx512m}"
    "$ES_HOME/bin/elasticsearch" -p "$SERVER_PID"
    -Ecluster.name=kubevents -Enode.name=kubevents
    -Ediscovery.type=single-node -Enetwork.host=127.0.0.1
    -Ehttp.port="$PORT" -Etransport.port="$TRANSPORT_PORT"
    -Epath.data="$DATA_DIR" -Epath.logs="$ES_LOGS"
    -Ecluster.routing.allocation.disk.threshold_enabled=false
    # The zip carries x-pack-security: keep plain HTTP without users for tests.
    -Expack.security.enabled=false
    # Tests clean up with wildcards (DELETE /kubevents-test-*).
    -Eaction.destructive_requires_name=false)
  if as_root; then start_bg elasticsearch runuser -u "$ES_USER" -- "${cmd[@]}"
  else start_bg elasticsearch "${cmd[@]}"; fi
}

# start_bg's pid is runuser, whose child is the CLI JVM, whose child is the server JVM (pid from -p).
# SIGTERM to the CLI stops the server cleanly (SIGTERM to runuser would SIGKILL the CLI after 2 s);
# then make sure the server is gone before cleaning up.
stop() {
  local top cli srv=""
  [[ -f "$SERVER_PID" ]] && srv="$(cat "$SERVER_PID")"
  if is_running elasticsearch; then
    top="$(cat "$RUN/elasticsearch.pid")"
    if as_root; then cli="$(pgrep -P "$top" || true)"; else cli="$top"; fi
    log "stopping elasticsearch (cli pid ${cli:-?}, server pid ${srv:-?})"
    if [[ -n "$cli" ]]; then kill -TERM "$cli" 2>/dev/null || true; fi
  fi
  if [[ -n "$srv" ]]; then
    for _ in $(seq 1 120); do kill -0 "$srv" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$srv" 2>/dev/null && { log "elasticsearch server still alive: SIGKILL"; kill -KILL "$srv"; }
  fi
  stop_bg elasticsearch
  rm -f "$SERVER_PID"
}

healthy() { curl -sf -m 5 "http://127.0.0.1:$PORT/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  wait) wait_for elasticsearch "${ES_WAIT_TIMEOUT:-180}" healthy ;;
  stop) stop ;;
  status)
    if is_running elasticsearch && healthy; then
      echo "elasticsearch $ES_VERSION: ready (server pid $(cat "$SERVER_PID" 2>/dev/null || echo '?'))"
    elif is_running elasticsearch; then echo "elasticsearch $ES_VERSION: starting"
    else echo "elasticsearch: stopped"; exit 1; fi ;;
  env) echo "export KUBEVENTS_ELASTICSEARCH_URL=http://127.0.0.1:$PORT" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
