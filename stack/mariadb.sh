#!/usr/bin/env bash
# MariaDB (Debian's package) as the project's MySQL, on 127.0.0.1:3306, root without password.
# Usage: stack/mariadb.sh install|start|wait|stop|status|env
source "$(dirname "$0")/lib.sh"

PORT=3306
DATA_DIR="$DATA/mariadb"
SOCKET="$RUN/mariadb.sock"
DATABASE=kubevents
export PATH="$PATH:/usr/sbin"  # mariadbd lives there; non-login shells may lack it

install() {
  command -v mariadbd >/dev/null && command -v mariadb >/dev/null && return 0
  log "mariadb: installing Debian packages (first run only)"
  local pkgs=(mariadb-server-core mariadb-client)
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when the install fails without it (it costs ~10 s).
  apt-get install -y -q "${pkgs[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; }
}

start() {
  install
  is_running mariadb && { log "mariadb already running (pid $(cat "$RUN/mariadb.pid"))"; return 0; }
  port_open "$PORT" && die "port $PORT is taken by another process"
  local user; user="$(id -un)"
  if [[ ! -d "$DATA_DIR/mysql" ]]; then
    log "mariadb: initialising $DATA_DIR"
    mkdir -p "$DATA_DIR"
    mariadb-install-db --no-defaults --datadir="$DATA_DIR" --user="$user" \
      --auth-root-authentication-method=normal --skip-test-db >>"$LOGS/mariadb.log" 2>&1 \
      || { tail -n 20 "$LOGS/mariadb.log" >&2; rm -rf "$DATA_DIR"; die "mariadb-install-db failed"; }
  fi
  # --no-defaults: ignore /etc/mysql; everything the tests rely on is on this command line.
  # Durability knobs are relaxed (flush once a second): test data, and much faster commits.
  start_bg mariadb mariadbd --no-defaults --datadir="$DATA_DIR" --socket="$SOCKET" \
    --pid-file="$DATA_DIR/mariadbd.pid" --port="$PORT" --bind-address=127.0.0.1 --user="$user" \
    --skip-name-resolve --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --default-time-zone=+00:00 --innodb-buffer-pool-size=128M \
    --innodb-flush-log-at-trx-commit=2 --max-connections=200 --skip-log-bin
}

sql() { mariadb --no-defaults -h127.0.0.1 -P"$PORT" -uroot "$@"; }

wait_ready() {
  wait_for mariadb "${MARIADB_WAIT_TIMEOUT:-60}" sql -e 'select 1'
  sql -e "CREATE DATABASE IF NOT EXISTS \`$DATABASE\` CHARACTER SET utf8mb4"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  wait) wait_ready ;;
  stop) stop_bg mariadb ;;
  status)
    if is_running mariadb && sql -e 'select 1' >/dev/null 2>&1; then
      echo "mariadb $(sql -N -e 'select version()'): ready (pid $(cat "$RUN/mariadb.pid"))"
    elif is_running mariadb; then echo "mariadb: starting"
    else echo "mariadb: stopped"; exit 1; fi ;;
  env) echo "export KUBEVENTS_MYSQL_URL=mysql+pymysql://root@127.0.0.1:$PORT/$DATABASE" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
