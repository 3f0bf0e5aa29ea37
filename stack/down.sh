#!/usr/bin/env bash
# make stack-down: stop every server the stack started (data stays in .stack/data).
source "$(dirname "$0")/lib.sh"
# The 3-node Kafka cluster only if it runs (make stack KAFKA_BROKERS=3 started it).
if "$ROOT/stack/kafka-cluster.sh" running; then "$ROOT/stack/kafka-cluster.sh" stop || true; fi
for svc in kubernetes mariadb elasticsearch9 elasticsearch kafka; do "$ROOT/stack/$svc.sh" stop || true; done
log "stack stopped"
