#!/usr/bin/env bash
# The stack's environment (what make stack writes to .stack/env), on stdout: each stack script's
# `env` (servers' addresses, tools' paths). It starts nothing, so it can also be run alone, e.g.
# after installing a tool. The 3-node Kafka cluster's address (KUBEVENTS_TEST_KAFKA_CLUSTER) is
# there with KAFKA_BROKERS=3, and while the cluster runs (a later plain make stack, as make test's
# sub-steps run, keeps it).
source "$(dirname "$0")/lib.sh"
echo "# Written by make stack; source it: . .stack/env"
for svc in kafka elasticsearch elasticsearch9 mariadb kubernetes helm; do "$ROOT/stack/$svc.sh" env; done
if [[ "${KAFKA_BROKERS:-1}" == 3 ]] || "$ROOT/stack/kafka-cluster.sh" running; then
  "$ROOT/stack/kafka-cluster.sh" env
fi
