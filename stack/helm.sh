#!/usr/bin/env bash
# helm, the tool that lints and renders deploy/helm/kubevents (a tool, not a server: start, wait
# and stop do nothing, so that up.sh and down.sh can treat it like the servers).
#   install  build helm once per version into $CACHE/helm/<version>/bin (from the Go module proxy)
#   status   say whether it is installed
#   env      KUBEVENTS_HELM=<path of the binary>
# shellcheck source=stack/lib.sh
source "$(dirname "$0")/lib.sh"

HELM_VERSION="${KUBEVENTS_HELM_VERSION:-v4.3.2}"
HELM_BIN="$CACHE/helm/$HELM_VERSION/bin"
HELM="$HELM_BIN/helm"

cmd_install() {
  [[ -x "$HELM" ]] && return 0
  command -v go >/dev/null || die "go is required to build helm"
  local t0=$SECONDS major="${HELM_VERSION%%.*}"
  log "building helm $HELM_VERSION"
  mkdir -p "$HELM_BIN"
  # helm's own Makefile stamps the version with -X: without it `helm version` says v4.0+unreleased
  # (and charts' kubeVersion/helm-version checks would see that). go install into a temporary GOBIN
  # and move the binary, so a half-written helm never looks installed.
  local tmp
  tmp="$(mktemp -d "$CACHE/helm/.build-XXXXXX")"
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.gitTreeState=clean" \
    "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" >&2
  mv "$tmp/helm" "$HELM"
  rmdir "$tmp"
  log "helm $HELM_VERSION installed in $HELM_BIN ($((SECONDS - t0)) s)"
}

cmd_status() {
  if [[ -x "$HELM" ]]; then printf '%-24s installed (%s)\n' helm "$HELM"
  else printf '%-24s not installed\n' helm; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  start | wait | stop) ;;
  status) cmd_status ;;
  env) echo "export KUBEVENTS_HELM=$HELM" ;;
  *) echo "usage: $0 install|start|wait|stop|status|env" >&2; exit 2 ;;
esac
