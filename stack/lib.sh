# Shared helpers for the stack scripts. Sourced, never run.
# Layout:
#   $CACHE  (~/.cache/kubevents, outside the checkout): downloads, unpacked servers, built binaries,
#           keyed by version, so that only the first run on a machine is slow.
#   $STATE  (.stack/ in the checkout, git-ignored): data dirs, logs, pid files, env file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBEVENTS_CACHE_DIR:-$HOME/.cache/kubevents}"
STATE="${KUBEVENTS_STACK_DIR:-$ROOT/.stack}"
LOGS="$STATE/logs"
RUN="$STATE/run"
DATA="$STATE/data"
mkdir -p "$CACHE" "$LOGS" "$RUN" "$DATA"

log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# is_running NAME: the pid file exists and its process is alive.
is_running() {
  local pidfile="$RUN/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# start_bg NAME CMD...: start CMD detached, stdout+stderr to .stack/logs/NAME.log, pid to .stack/run/NAME.pid.
# setsid puts it in its own session so that it outlives the make/CI step that started it.
start_bg() {
  local name="$1"; shift
  if is_running "$name"; then log "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  log "starting $name"
  setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# stop_bg NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_bg() {
  local name="$1" pidfile="$RUN/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# wait_for NAME TIMEOUT_S CMD...: poll CMD until it succeeds; on timeout show the log tail and fail.
wait_for() {
  local name="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      tail -n 40 "$LOGS/$name.log" >&2 || true
      die "$name not ready after ${timeout}s (log: $LOGS/$name.log)"
    fi
    if [[ -f "$RUN/$name.pid" ]] && ! is_running "$name"; then
      tail -n 40 "$LOGS/$name.log" >&2 || true
      die "$name exited during start-up (log: $LOGS/$name.log)"
    fi
    sleep 1
  done
  log "$name ready"
}

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# fetch_maven GROUP:ARTIFACT:VERSION[:TYPE[:CLASSIFIER]] DEST_DIR: copy one artefact through Maven (so ~/.m2 caches it).
fetch_maven() {
  local coords="$1" dest="$2"
  mkdir -p "$dest"
  mvn -q -B dependency:copy -Dartifact="$coords" -DoutputDirectory="$dest" -Dmdep.overWriteIfNewer=true >&2
}

# make_certs SERVICE DIR SERVER [CA_CN]: in DIR a throwaway CA (ca.pem), a server certificate
# SERVER.pem/.key for 127.0.0.1/localhost and a client certificate client.pem/.key, made once
# (openssl takes about a second; later starts reuse them until a month before they expire).
# Clients check the host name: the server certificate names 127.0.0.1 and localhost only (SAN,
# not CN), so that connecting by another name (the machine's host name) fails the check.
# Returns 0 when it made them, 1 when those in DIR were reused.
make_certs() {
  local service="$1" dir="$2" server="$3" ca_cn="${4:-kubevents stack CA}" fresh=1 f
  for f in ca.pem "$server.pem" client.pem; do
    openssl x509 -checkend 2592000 -noout -in "$dir/$f" >/dev/null 2>&1 || fresh=0
  done
  [[ -f "$dir/$server.key" && -f "$dir/client.key" ]] || fresh=0
  ((fresh)) && return 1
  log "$service: generating a throwaway CA and TLS certificates in $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=$ca_cn" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    sign() {  # sign NAME SUBJECT EXTENSIONS
      openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" "$3" >"$1.ext"
      openssl x509 -req -sha256 -days 825 -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile "$1.ext" -out "$1.pem"
      rm -f "$1.csr" "$1.ext"
    }
    sign "$server" "/CN=localhost" $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
    sign client "/CN=kubevents-client" "extendedKeyUsage=clientAuth"
    chmod 600 ./*.key
  ) >>"$LOGS/$service.log" 2>&1 || die "$service: certificate generation failed (see $LOGS/$service.log)"
}
