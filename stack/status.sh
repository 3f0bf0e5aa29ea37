#!/usr/bin/env bash
# make stack-status: one line per server (ready / starting / stopped); exit 1 if any is not running.
source "$(dirname "$0")/lib.sh"
rc=0
for svc in kafka elasticsearch elasticsearch9 mariadb kubernetes; do "$ROOT/stack/$svc.sh" status || rc=1; done
exit $rc
