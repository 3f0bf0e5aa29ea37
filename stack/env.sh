#!/usr/bin/env bash
# The stack's environment (what make stack writes to .stack/env), on stdout. With KAFKA_BROKERS=3
# it names the 3-node Kafka cluster too (KUBEVENTS_TEST_KAFKA_CLUSTER, for its tests).
source "$(dirname "$0")/lib.sh"
echo "# Written by make stack; source it: . .stack/env"
for svc in kafka elasticsearch elasticsearch9 mariadb kubernetes; do "$ROOT/stack/$svc.sh" env; done
if [[ "${KAFKA_BROKERS:-1}" == 3 ]]; then "$ROOT/stack/kafka-cluster.sh" env; fi
