#!/usr/bin/env bash
# make stack-down: stop every server the stack started (data stays in .stack/data).
source "$(dirname "$0")/lib.sh"
for svc in kubernetes mariadb elasticsearch9 elasticsearch kafka; do "$ROOT/stack/$svc.sh" stop || true; done
log "stack stopped"
