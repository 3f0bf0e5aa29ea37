#!/usr/bin/env bash
# MariaDB (Debian's package) as the project's MySQL, on 127.0.0.1:3306, root without password.
# It serves TLS too, optional for clients (plain connections still work): a throwaway CA signs its
# certificate, and two users prove TLS is really used, one REQUIRE SSL, one REQUIRE X509 (mutual TLS).
# Usage: stack/mariadb.sh install|start|wait|stop|status|env
source "$(dirname "$0")/lib.sh"

PORT=3306
DATA_DIR="$DATA/mariadb"
SOCKET="$RUN/mariadb.sock"
DATABASE=kubevents
# Outside DATA_DIR, like kafka-tls: wiping the data keeps the certificates.
TLS_DIR="$STATE/mariadb-tls"
# Throwaway credentials of a server bound to 127.0.0.1. They may use the tests' databases
# (kv_test_*) and the stack's own.
TLS_PASSWORD=kubevents-stack-secret
SSL_USER=kubevents_ssl
X509_USER=kubevents_x509
export PATH="$PATH:/usr/sbin"  # mariadbd lives there; non-login shells may lack it

install() {
  command -v mariadbd >/dev/null && command -v mariadb >/dev/null && return 0
  log "mariadb: installing Debian packages (first run only)"
  local pkgs=(mariadb-server-core mariadb-client)
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when the install fails without it (it costs ~10 s).
  apt-get install -y -q "${pkgs[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; }
}

# The certificates' directory with symbolic links resolved: a worktree whose .stack links to the
# main checkout's writes paths that outlive the worktree.
tls_dir() { (cd "$TLS_DIR" 2>/dev/null && pwd -P) || echo "$TLS_DIR"; }

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
  make_certs mariadb "$TLS_DIR" server "kubevents stack MariaDB CA" || true  # 1: reused
  local tls; tls="$(tls_dir)"
  # --no-defaults: ignore /etc/mysql; everything the tests rely on is on this command line.
  # Durability knobs are relaxed (flush once a second): test data, and much faster commits.
  # --ssl-*: TLS offered, not required (require_secure_transport stays off).
  start_bg mariadb mariadbd --no-defaults --datadir="$DATA_DIR" --socket="$SOCKET" \
    --pid-file="$DATA_DIR/mariadbd.pid" --port="$PORT" --bind-address=127.0.0.1 --user="$user" \
    --skip-name-resolve --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --default-time-zone=+00:00 --innodb-buffer-pool-size=128M \
    --innodb-flush-log-at-trx-commit=2 --max-connections=200 --skip-log-bin \
    --ssl-ca="$tls/ca.pem" --ssl-cert="$tls/server.pem" --ssl-key="$tls/server.key"
}

sql() { mariadb --no-defaults -h127.0.0.1 -P"$PORT" -uroot "$@"; }

wait_ready() {
  wait_for mariadb "${MARIADB_WAIT_TIMEOUT:-60}" sql -e 'select 1'
  sql -e "CREATE DATABASE IF NOT EXISTS \`$DATABASE\` CHARACTER SET utf8mb4"
  # A server started by an older version of this script runs on without TLS (start leaves a
  # running server alone): the TLS tests would fail, so say how to fix it.
  [[ "$(sql -N -e "SELECT @@have_ssl")" == YES ]] \
    || log "mariadb: WARNING: running without TLS (started before TLS was added): stack/mariadb.sh stop, then make stack"
  # A plain connection of these users is refused by the server: a test that writes as one of
  # them proves the client used TLS (and, for X509, presented a certificate of the stack's CA).
  local user require
  for user in "$SSL_USER:SSL" "$X509_USER:X509"; do
    require="${user#*:}" user="${user%%:*}"
    sql -e "CREATE USER IF NOT EXISTS '$user'@'127.0.0.1' IDENTIFIED BY '$TLS_PASSWORD';
      ALTER USER '$user'@'127.0.0.1' REQUIRE $require;
      GRANT ALL PRIVILEGES ON \`kv\\_test\\_%\`.* TO '$user'@'127.0.0.1';
      GRANT ALL PRIVILEGES ON \`$DATABASE\`.* TO '$user'@'127.0.0.1';"
  done
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
  env)
    echo "export KUBEVENTS_MYSQL_URL=mysql+pymysql://root@127.0.0.1:$PORT/$DATABASE"
    echo "export KUBEVENTS_TEST_MYSQL_SSL_URL=mysql+pymysql://$SSL_USER:$TLS_PASSWORD@127.0.0.1:$PORT/$DATABASE"
    echo "export KUBEVENTS_TEST_MYSQL_X509_URL=mysql+pymysql://$X509_USER:$TLS_PASSWORD@127.0.0.1:$PORT/$DATABASE"
    tls="$(tls_dir)"
    echo "export KUBEVENTS_TEST_MYSQL_CA=$tls/ca.pem"
    echo "export KUBEVENTS_TEST_MYSQL_CLIENT_CERT=$tls/client.pem"
    echo "export KUBEVENTS_TEST_MYSQL_CLIENT_KEY=$tls/client.key" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
