#!/usr/bin/env bash
# Write .stack/env from each stack script's `env` (servers' addresses, tools' paths). up.sh runs it
# last; it starts nothing, so it can also be run alone, e.g. after installing a tool.
source "$(dirname "$0")/lib.sh"

{
  echo "# Written by make stack; source it: . .stack/env"
  for svc in kafka elasticsearch elasticsearch9 mariadb kubernetes helm; do "$ROOT/stack/$svc.sh" env; done
} >"$STATE/env.tmp"
mv "$STATE/env.tmp" "$STATE/env"
