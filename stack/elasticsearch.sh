#!/usr/bin/env bash
# Elasticsearch, single node: 8.x on 127.0.0.1:9200 and, beside it, 9.x on 9201 (stack/elasticsearch9.sh
# is this script with the 9.x parameters).
# Usage: stack/elasticsearch.sh install|start|wait|stop|status|env
# Parameters (environment): ES_VERSION, ES_NAME (names the pid file, the logs and the data/state
# dirs: two instances need two names), ES_PORT, ES_TRANSPORT_PORT, ES_CLUSTER, ES_ENV_VAR (the
# variable 'env' exports), ES_JAVA_HOME, ES_JAVA_OPTS.
#
# 8.x: Elastic's integ-test-zip from Maven Central. That zip is the server core plus only the
# transport-netty4, apm, x-pack-core and x-pack-security modules. Index/bulk/search/aggregations,
# flattened fields, composable index templates (with aliases) work, and indexing into a data
# stream creates it; these do not: GET / and HEAD / (client.info() raises 405, client.ping() is
# False: use cluster.health), the _data_stream APIs (so a data stream cannot be deleted), painless
# scripts, _update_by_query/_delete_by_query/_reindex, ingest pipelines' processors.
#
# 9.x: Elastic publishes no integ-test-zip for 9.x (its maven-metadata.xml stops at 8.19.x), but
# Maven Central has the server jar (org.elasticsearch:elasticsearch), its libraries, the entitlement
# bridge and the transport-netty4 module. install assembles those into the zip's layout (lib/,
# lib/entitlement-bridge/, modules/transport-netty4/) and adds, made here, what only Elastic's
# distributions carry: a launcher doing the server-cli's part (stack/es-launcher/EsLauncher.java),
# the entitlement agent (EntitlementAgent.java there), the console loader the server insists on
# (AnsiConsoleLoader.java there), config/log4j2.properties, and the system's libzstd. The result
# is the server core plus transport-netty4 (no x-pack at all, so xpack.* settings are unknown to
# it): what works and what does not is the same list as for the 8.x zip above. Elastic's vector
# library (libvec) is absent, so it is switched off (else the server disables all native access):
# vector similarity runs on Lucene's Java (Panama) code instead.
source "$(dirname "$0")/lib.sh"

ES_VERSION="${ES_VERSION:-8.19.21}"
ES_MAJOR="${ES_VERSION%%.*}"
ES_NAME="${ES_NAME:-elasticsearch}"
ES_USER=kubevents  # Elasticsearch refuses to run as root
PORT="${ES_PORT:-9200}"
TRANSPORT_PORT="${ES_TRANSPORT_PORT:-9300}"
CLUSTER="${ES_CLUSTER:-kubevents}"
ENV_VAR="${ES_ENV_VAR:-KUBEVENTS_ELASTICSEARCH_URL}"
# The JVM's heap: 512 MiB each (both instances: about 0.8 GB RSS apiece at idle). The tests index
# small documents in small batches; what is short on this 2-core machine is CPU, which a bigger heap
# does not buy back.
JAVA_OPTS="${ES_JAVA_OPTS:--Xms512m -Xmx512m}"

# 9.x's assembly is keyed by its recipe too (the sources in stack/es-launcher/ and install_from_jars
# below): a changed recipe builds a new directory instead of replacing one a running server uses.
recipe_id() { cat "$LAUNCHER_SRC"/*.java <(sed -n '/^install_from_jars()/,/^}/p' "$0") | sha1sum | cut -c1-12; }
LAUNCHER_SRC="$ROOT/stack/es-launcher"
ES_BUILD="$ES_VERSION"
((ES_MAJOR >= 9)) && ES_BUILD="$ES_VERSION-$(recipe_id)"
ES_HOME="$CACHE/elasticsearch/$ES_BUILD/elasticsearch-$ES_VERSION"
DATA_DIR="$DATA/$ES_NAME"
ES_STATE="$STATE/$ES_NAME"  # config copy (ES writes its keystore there), tmp, server pid file
CONF_DIR="$ES_STATE/config"
SERVER_PID="$ES_STATE/server.pid"
ES_LOGS="$LOGS/$ES_NAME"  # ES's own files; its console output goes to $LOGS/$ES_NAME.log

as_root() { [[ "$(id -u)" == 0 ]]; }

install() {
  [[ -f "$ES_HOME/.installed" ]] && return 0
  if ((ES_MAJOR >= 9)); then install_from_jars; touch "$ES_HOME/.installed"; return 0; fi
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

# mvn_runtime_jars DIR GROUP:ARTIFACT...: copy the artefacts and their runtime dependencies into DIR.
mvn_runtime_jars() {
  local dir="$1" deps="" coords g a; shift
  for coords in "$@"; do
    IFS=: read -r g a <<<"$coords"
    deps="$deps<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$ES_VERSION</version></dependency>"
  done
  mkdir -p "$dir"
  cat >"$dir.pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>kubevents.stack</groupId><artifactId>es-runtime</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>$deps</dependencies></project>
EOF
  mvn -q -B -f "$dir.pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir" \
    >"$dir.mvn.log" 2>&1 || { cat "$dir.mvn.log" >&2; die "could not fetch $* $ES_VERSION"; }
}

# 9.x: the zip's layout from Maven Central jars (see the header), built in a scratch dir and moved
# into the cache when complete.
install_from_jars() {
  log "elasticsearch $ES_VERSION: assembling the server from Maven Central jars (first run only)"
  local top="$CACHE/elasticsearch/$ES_BUILD" java tmp home jar plat libzstd
  java="$(java_home)"
  mkdir -p "$CACHE/elasticsearch"
  tmp="$(mktemp -d "$CACHE/elasticsearch/.assemble-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT  # also when a step fails
  home="$tmp/elasticsearch-$ES_VERSION"
  local t0=$SECONDS
  mvn_runtime_jars "$tmp/server" org.elasticsearch:elasticsearch
  mvn_runtime_jars "$tmp/netty4" org.elasticsearch.plugin:transport-netty4
  mvn_runtime_jars "$tmp/bridge" org.elasticsearch:elasticsearch-entitlement-bridge
  log "elasticsearch $ES_VERSION: jars fetched in $((SECONDS - t0))s (through ~/.m2)"
  t0=$SECONDS
  mkdir -p "$home/lib/entitlement-bridge" "$home/lib/entitlement-agent" "$home/lib/tools/ansi-console" \
    "$home/modules/transport-netty4" "$home/config" "$home/launcher" "$home/plugins"
  mv "$tmp/server"/*.jar "$home/lib/"
  # The bridge is patched into java.base (--patch-module), so it must stay off the module path.
  mv "$tmp/bridge/elasticsearch-entitlement-bridge-$ES_VERSION.jar" "$home/lib/entitlement-bridge/"
  # A module carries its own jars, less those the server already has (as in Elastic's zips).
  for jar in "$tmp/netty4"/*.jar; do
    [[ -e "$home/lib/$(basename "$jar")" ]] || mv "$jar" "$home/modules/transport-netty4/"
  done
  # The module's descriptor and entitlement policy ship inside its jar.
  python3 - "$home/modules/transport-netty4/transport-netty4-$ES_VERSION.jar" "$home/modules/transport-netty4" <<'EOF'
import sys, zipfile
jar, dest = sys.argv[1:]
with zipfile.ZipFile(jar) as z:
    for name in ("plugin-descriptor.properties", "entitlement-policy.yaml"):
        with open(f"{dest}/{name}", "wb") as f:
            f.write(z.read(f"META-INF/es-plugins/transport-netty4/{name}"))
EOF
  [[ -x "$java/bin/javac" ]] || die "$java has no javac (a JDK is needed to build the launcher)"
  "$java/bin/javac" --release 21 -nowarn -cp "$home/lib/*" -d "$home/launcher" "$LAUNCHER_SRC/EsLauncher.java"
  mkdir -p "$tmp/agent"
  "$java/bin/javac" --release 21 -d "$tmp/agent" "$LAUNCHER_SRC/EntitlementAgent.java"
  printf 'Agent-Class: kubevents.stack.EntitlementAgent\nCan-Retransform-Classes: true\nCan-Redefine-Classes: true\n' >"$tmp/agent.mf"
  "$java/bin/jar" --create --file "$home/lib/entitlement-agent/kubevents-entitlement-agent.jar" \
    --manifest "$tmp/agent.mf" -C "$tmp/agent" .
  mkdir -p "$tmp/ansi"
  "$java/bin/javac" --release 21 -d "$tmp/ansi" "$LAUNCHER_SRC/AnsiConsoleLoader.java"
  "$java/bin/jar" --create --file "$home/lib/tools/ansi-console/kubevents-no-ansi-console.jar" -C "$tmp/ansi" .
  # Native zstd (Elastic bundles its own build; the system's is the same library). Without it the
  # server runs, but cannot use zstd (best_compression).
  case "$(uname -m)" in x86_64) plat=linux-x64 ;; aarch64) plat=linux-aarch64 ;; *) plat="" ;; esac
  libzstd="$(ldconfig -p 2>/dev/null | awk '/libzstd\.so\.1 / {print $NF; exit}')"
  if [[ -n "$plat" && -n "$libzstd" ]]; then
    mkdir -p "$home/lib/platform/$plat"
    cp -L "$libzstd" "$home/lib/platform/$plat/libzstd.so"
  else
    log "elasticsearch $ES_VERSION: no system libzstd found; the server runs without native zstd"
  fi
  echo "# Settings come from stack/elasticsearch.sh (-E style, through the launcher)." >"$home/config/elasticsearch.yml"
  cat >"$home/config/log4j2.properties" <<'EOF'
# stack/elasticsearch.sh: everything to the console, which the stack writes to .stack/logs/<name>.log.
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%consoleException%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
EOF
  rm -rf "$top"
  mkdir -p "$top"
  mv "$home" "$top/"
  rm -rf "$tmp"
  trap - EXIT
  log "elasticsearch $ES_VERSION: assembled in $((SECONDS - t0))s"
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
  if [[ ! -f "$ES_STATE/.version" || "$(cat "$ES_STATE/.version")" != "$ES_BUILD" ]]; then
    rm -rf "$CONF_DIR"
    cp -r "$ES_HOME/config" "$CONF_DIR"
    echo "$ES_BUILD" >"$ES_STATE/.version"
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

# jdk_feature JAVA_HOME: its feature version (17, 21, 25...), from the release file.
jdk_feature() { sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$1/release" 2>/dev/null; }

# The JDK to run on: ES_JAVA_HOME if set; else 8.x prefers the system Java 17 (it runs on 17+, and has
# not been tested with much newer JDKs); 9.x needs 21+: the oldest JDK of at least 21 under
# /usr/lib/jvm (Temurin 25 on these machines).
java_home() {
  local min=17 best="" bestv=999 d v
  ((ES_MAJOR >= 9)) && min=21
  if [[ -n "${ES_JAVA_HOME:-}" ]]; then
    v="$(jdk_feature "$ES_JAVA_HOME")"
    [[ -z "$v" || "$v" -ge "$min" ]] || die "ES_JAVA_HOME=$ES_JAVA_HOME is Java $v; elasticsearch $ES_VERSION needs $min+"
    echo "$ES_JAVA_HOME"; return
  fi
  if ((ES_MAJOR < 9)) && [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]]; then
    echo /usr/lib/jvm/java-17-openjdk-amd64; return
  fi
  for d in /usr/lib/jvm/*/; do
    d="${d%/}"
    [[ -L "$d" || ! -x "$d/bin/java" ]] && continue
    v="$(jdk_feature "$d")"
    [[ -n "$v" ]] && ((v >= min && v < bestv)) && { best="$d"; bestv="$v"; }
  done
  [[ -n "$best" ]] && { echo "$best"; return; }
  ((ES_MAJOR < 9)) && { dirname "$(dirname "$(readlink -f "$(command -v java)")")"; return; }
  die "elasticsearch $ES_VERSION needs Java $min+; none under /usr/lib/jvm (set ES_JAVA_HOME)"
}

# Node settings, shared by both kinds of start.
settings() {
  printf '%s\n' "cluster.name=$CLUSTER" "node.name=$CLUSTER" \
    discovery.type=single-node network.host=127.0.0.1 \
    "http.port=$PORT" "transport.port=$TRANSPORT_PORT" \
    "path.data=$DATA_DIR" "path.logs=$ES_LOGS" \
    cluster.routing.allocation.disk.threshold_enabled=false \
    action.destructive_requires_name=false  # tests clean up with wildcards (DELETE /kubevents-test-*)
  # The 8.x zip carries x-pack-security: keep plain HTTP without users for tests. (9.x: no x-pack.)
  ((ES_MAJOR >= 9)) || echo xpack.security.enabled=false
}

# 9.x: the server JVM's options, as Elastic's server-cli computes them for its zip (system options,
# config/jvm.options, the entitlement bridge and agent, heap ergonomics for a small heap), with
# everything the JVM writes (gc log, error and replay files, heap dumps) in the instance's log dir.
server_jvm_options_9() {
  local java="$1" v
  v="$(jdk_feature "$java")"
  printf '%s\n' -Des.networkaddress.cache.ttl=60 -Des.networkaddress.cache.negative.ttl=10 \
    -XX:+AlwaysPreTouch -Xss1m -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djna.nosys=true \
    -XX:-OmitStackTraceInFastThrow \
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
    --add-opens=org.apache.lucene.core/org.apache.lucene.codecs.lucene99=org.elasticsearch.server \
    --add-opens=org.apache.lucene.core/org.apache.lucene.internal.vectorization=org.elasticsearch.server \
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true -Dlog4j2.formatMsgNoLookups=true \
    -Djava.locale.providers=CLDR "-Dorg.apache.lucene.vectorization.upperJavaFeatureVersion=$v" \
    "-Des.path.home=$ES_HOME" -Des.distribution.type=zip -Des.java.type=ES_JAVA_HOME \
    --enable-native-access=org.elasticsearch.nativeaccess,org.elasticsearch.foreign,org.elasticsearch.foreign.adapter,org.apache.lucene.core \
    --enable-native-access=ALL-UNNAMED --illegal-native-access=deny \
    -Dorg.elasticsearch.nativeaccess.enableVectorLibrary=false \
    -XX:+EnableDynamicAgentLoading -Djdk.attach.allowAttachSelf=true \
    "--patch-module=java.base=$ES_HOME/lib/entitlement-bridge/elasticsearch-entitlement-bridge-$ES_VERSION.jar" \
    --add-exports=java.base/org.elasticsearch.entitlement.bridge=org.elasticsearch.entitlement,java.logging,java.net.http,java.naming,jdk.net,jdk.zipfs,jdk.management.agent \
    -XX:+UseG1GC "-Djava.io.tmpdir=$ES_STATE/tmp" --add-modules=jdk.incubator.vector \
    -Dorg.apache.lucene.store.defaultReadAdvice=normal -Dorg.apache.lucene.store.MMapDirectory.sharedArenaMaxPermits=1 \
    -XX:+HeapDumpOnOutOfMemoryError "-XX:HeapDumpPath=$ES_LOGS" -XX:+ExitOnOutOfMemoryError \
    "-XX:ErrorFile=$ES_LOGS/hs_err_pid%p.log" "-XX:ReplayDataFile=$ES_LOGS/replay_pid%p.log" \
    "-Xlog:gc*,gc+age=trace,safepoint:file=$ES_LOGS/gc.log:utctime,level,pid,tags:filecount=4,filesize=16m"
  # shellcheck disable=SC2086
  printf '%s\n' $JAVA_OPTS -XX:G1HeapRegionSize=4m -XX:InitiatingHeapOccupancyPercent=30 -XX:G1ReservePercent=15 \
    --module-path "$ES_HOME/lib" --add-modules=jdk.net --add-modules=jdk.management.agent \
    --add-modules=ALL-MODULE-PATH -m org.elasticsearch.server/org.elasticsearch.bootstrap.Elasticsearch
}

start() {
  install
  is_running "$ES_NAME" && { log "$ES_NAME already running (pid $(cat "$RUN/$ES_NAME.pid"))"; return 0; }
  port_open "$PORT" && die "port $PORT is taken by another process"
  port_open "$TRANSPORT_PORT" && die "port $TRANSPORT_PORT is taken by another process"
  prepare
  rm -f "$SERVER_PID"
  ulimit -n 65535 2>/dev/null || true  # ES warns below 65535 open files (where the hard limit allows)
  local java cmd s
  java="$(java_home)"
  local -a node_settings jvm
  mapfile -t node_settings < <(settings)
  if ((ES_MAJOR >= 9)); then
    mapfile -t jvm < <(server_jvm_options_9 "$java")
    # The launcher JVM stays small (like Elastic's CLI); it holds the server's stdin (see EsLauncher).
    cmd=(env LIBFFI_TMPDIR="$ES_STATE/tmp" "$java/bin/java" -Xms4m -Xmx64m -XX:+UseSerialGC
      "-Djava.io.tmpdir=$ES_STATE/tmp" -Dlog4j2.statusLoggerLevel=OFF
      -cp "$ES_HOME/lib/*:$ES_HOME/launcher" EsLauncher "$SERVER_PID" "$CONF_DIR" "$ES_LOGS"
      "path.home=$ES_HOME" "${node_settings[@]}" -- "$java/bin/java" "${jvm[@]}")
  else
    cmd=(env ES_JAVA_HOME="$java" ES_PATH_CONF="$CONF_DIR"
      ES_TMPDIR="$ES_STATE/tmp" CLI_JAVA_OPTS="-Djava.io.tmpdir=$ES_STATE/tmp"
      ES_JAVA_OPTS="$JAVA_OPTS"
      "$ES_HOME/bin/elasticsearch" -p "$SERVER_PID")
    for s in "${node_settings[@]}"; do cmd+=("-E$s"); done
  fi
  if as_root; then start_bg "$ES_NAME" runuser -u "$ES_USER" -- "${cmd[@]}"
  else start_bg "$ES_NAME" "${cmd[@]}"; fi
}

# start_bg's pid is runuser, whose child is the CLI JVM (9.x: the launcher), whose child is the
# server JVM (pid from -p / the launcher's pid file). SIGTERM to the CLI stops the server cleanly
# (SIGTERM to runuser would SIGKILL the CLI after 2 s); then make sure the server is gone before
# cleaning up.
stop() {
  local top cli srv=""
  [[ -f "$SERVER_PID" ]] && srv="$(cat "$SERVER_PID")"
  if is_running "$ES_NAME"; then
    top="$(cat "$RUN/$ES_NAME.pid")"
    if as_root; then cli="$(pgrep -P "$top" || true)"; else cli="$top"; fi
    log "stopping $ES_NAME (cli pid ${cli:-?}, server pid ${srv:-?})"
    if [[ -n "$cli" ]]; then kill -TERM "$cli" 2>/dev/null || true; fi
  fi
  if [[ -n "$srv" ]]; then
    for _ in $(seq 1 120); do kill -0 "$srv" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$srv" 2>/dev/null && { log "$ES_NAME server still alive: SIGKILL"; kill -KILL "$srv"; }
  fi
  stop_bg "$ES_NAME"
  rm -f "$SERVER_PID"
}

healthy() { curl -sf -m 5 "http://127.0.0.1:$PORT/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  wait) wait_for "$ES_NAME" "${ES_WAIT_TIMEOUT:-180}" healthy ;;
  stop) stop ;;
  status)
    if is_running "$ES_NAME" && healthy; then
      echo "$ES_NAME $ES_VERSION: ready on $PORT (server pid $(cat "$SERVER_PID" 2>/dev/null || echo '?'))"
    elif is_running "$ES_NAME"; then echo "$ES_NAME $ES_VERSION: starting"
    else echo "$ES_NAME: stopped"; exit 1; fi ;;
  env) echo "export $ENV_VAR=http://127.0.0.1:$PORT" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
