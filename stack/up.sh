#!/usr/bin/env bash
# make stack: obtain (first run), start and wait for every real server, then write .stack/env.
# Usage: stack/up.sh [service ...]   (default: all)   Idempotent: running servers are left alone.
# KAFKA_BROKERS=3 (make stack KAFKA_BROKERS=3) also starts the 3-node KRaft cluster
# (stack/kafka-cluster.sh) beside the single broker, and puts its address in .stack/env.
source "$(dirname "$0")/lib.sh"

SERVICES=("$@")
# helm is a tool, not a server (its start and wait do nothing): built here so that the chart's
# tests find it.
[[ ${#SERVICES[@]} -gt 0 ]] || SERVICES=(kafka elasticsearch elasticsearch9 mariadb kubernetes helm)
case "${KAFKA_BROKERS:-1}" in
  1) ;;
  3) [[ " ${SERVICES[*]} " == *" kafka-cluster "* ]] || SERVICES+=(kafka-cluster) ;;
  *) die "KAFKA_BROKERS=${KAFKA_BROKERS}: 1 (the single broker) or 3 (also the 3-node cluster)" ;;
esac

timed() {  # timed LABEL CMD...: run and report how long it took
  local label="$1" start=$SECONDS; shift
  "$@"
  log "$label took $((SECONDS - start))s"
}

# Installs run in parallel (the Kubernetes build is CPU-bound, the others mostly download);
# each writes its own log so a failure says which one.
pids=()
for svc in "${SERVICES[@]}"; do
  ( timed "install $svc" "$ROOT/stack/$svc.sh" install >"$LOGS/install-$svc.log" 2>&1 ) &
  pids+=("$!:$svc")
done
failed=0
for entry in "${pids[@]}"; do
  if ! wait "${entry%%:*}"; then
    log "install ${entry#*:} FAILED; last lines of $LOGS/install-${entry#*:}.log:"
    tail -n 30 "$LOGS/install-${entry#*:}.log" >&2
    failed=1
  else
    grep -h "took" "$LOGS/install-${entry#*:}.log" >&2 || true
  fi
done
((failed == 0)) || die "installation failed"

for svc in "${SERVICES[@]}"; do timed "start $svc" "$ROOT/stack/$svc.sh" start; done
for svc in "${SERVICES[@]}"; do timed "wait $svc" "$ROOT/stack/$svc.sh" wait; done

# Written aside and renamed: a test sourcing .stack/env meanwhile never reads half a file.
bash "$ROOT/stack/env.sh" >"$STATE/env.tmp"
mv "$STATE/env.tmp" "$STATE/env"
log "stack is up; environment in $STATE/env, logs in $LOGS"
