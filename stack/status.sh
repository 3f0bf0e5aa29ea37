#!/usr/bin/env bash
# make stack-status: one line per server (ready / starting / stopped); exit 1 if any is not running.
source "$(dirname "$0")/lib.sh"
rc=0
for svc in kafka elasticsearch elasticsearch9 mariadb kubernetes; do "$ROOT/stack/$svc.sh" status || rc=1; done
# The 3-node Kafka cluster only if it runs (make stack KAFKA_BROKERS=3 started it).
if "$ROOT/stack/kafka-cluster.sh" running; then "$ROOT/stack/kafka-cluster.sh" status || rc=1; fi
exit $rc
