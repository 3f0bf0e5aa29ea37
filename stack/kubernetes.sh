#!/usr/bin/env bash
# A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake nodes that run pods on paper), all on 127.0.0.1.
#   install  build the binaries once per version into $CACHE/kubernetes/<version>/bin (slow the first time)
#   start    generate certs/kubeconfig once, start the processes, create the fake nodes
#   wait     apiserver ready, default ServiceAccount present, nodes Ready
#   stop | status | env
# shellcheck source=stack/lib.sh
source "$(dirname "$0")/lib.sh"

# 1.37 matches the kubernetes Python client 37.x; it needs Go >= 1.26.
K8S_VERSION="${KUBEVENTS_K8S_VERSION:-v1.37.2}"
KWOK_VERSION="${KUBEVENTS_KWOK_VERSION:-v0.8.0}"
K8S_CACHE="$CACHE/kubernetes/$K8S_VERSION"
BIN="$K8S_CACHE/bin"
STAGES="$K8S_CACHE/kwok-stages"
K8S_STATE="$STATE/kubernetes"
KUBECONFIG_FILE="$STATE/kubeconfig"
NODES=(kwok-node-0 kwok-node-1 kwok-node-2)
KWOK_PORT=10247
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd etcdctl kwok)

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ---------------------------------------------------------------------------------------------
# install

installed() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -f "$STAGES/.complete" ]]
}

# k8s.io/kubernetes replaces its staging modules with ./staging/... paths that are not in the module
# zip, so `go install` cannot build it. A wrapper module pins each of them to the published v0.Y.Z.
build_kubernetes() {
  local work="$K8S_CACHE/src" mod_dir staging minor major
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$work" "$BIN"
  mod_dir="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$mod_dir" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"

  (
    cd "$work" || exit
    rm -f go.mod go.sum
    go mod init kubevents.local/kubernetes-build >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local m etcd_version
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$mod_dir/go.mod"); do
      # Only what kubernetes requires: some sample modules are not published at every version.
      grep -qE "^\s+$m v0\.0\.0" "$mod_dir/go.mod" && go mod edit -replace="$m=$m@$staging"
    done
    etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$mod_dir/go.mod")"
    [[ -n "$etcd_version" ]] || die "k8s.io/kubernetes@$K8S_VERSION does not require go.etcd.io/etcd/server/v3"

    # etcd: build the server that this Kubernetes itself requires, so the versions match.
    local ldflags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    export CGO_ENABLED=0
    log "resolving modules for kubernetes $K8S_VERSION"
    go get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$etcd_version" >&2
    log "compiling kubernetes $K8S_VERSION and etcd (long on 2 cores)"
    # One invocation so that the shared packages compile once.
    # -mod=mod: let the build add the go.sum entries of every package it needs.
    go build -mod=mod -trimpath -ldflags "$ldflags" -o "$work/out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 >&2
    mv out/server out/etcd
  )
  mv "$work"/out/* "$BIN/"
}

build_etcdctl() {
  local v work="$K8S_CACHE/src-etcdctl"
  v="$(cd "$K8S_CACHE/src" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
  log "building etcdctl $v"
  # `go install pkg@version` refuses etcdctl (its go.mod has replace directives), hence a wrapper
  # module of its own, so that it does not move the versions Kubernetes is built with.
  mkdir -p "$work"
  (
    cd "$work" || exit
    rm -f go.mod go.sum
    go mod init kubevents.local/etcdctl-build >/dev/null 2>&1
    export CGO_ENABLED=0
    go get "go.etcd.io/etcd/etcdctl/v3@$v" >&2
    go build -mod=mod -trimpath -ldflags "-s -w" -o "$BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3 >&2
  )
}

build_kwok() {
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  local dir
  dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$STAGES"
  # Node heartbeat through Leases (cheap), pods go straight to Running/Succeeded/deleted.
  cp "$dir/kustomize/stage/node/fast/node-initialize.yaml" \
    "$dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$dir"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "$STAGES/"
  chmod 644 "$STAGES"/*.yaml
  touch "$STAGES/.complete"
}

cmd_install() {
  installed && return 0
  command -v go >/dev/null || die "go is required to build Kubernetes"
  local t0=$SECONDS b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
    [[ -x "$BIN/$b" ]] || { build_kubernetes; break; }
  done
  [[ -x "$BIN/etcdctl" ]] || build_etcdctl
  [[ -x "$BIN/kwok" && -f "$STAGES/.complete" ]] || build_kwok
  log "kubernetes $K8S_VERSION installed in $BIN ($((SECONDS - t0)) s)"
}

# ---------------------------------------------------------------------------------------------
# start

# Certificates, keys, token file and kubeconfig: generated once, reused across restarts.
gen_credentials() {
  local d="$K8S_STATE"
  [[ -f "$d/.complete" && -f "$KUBECONFIG_FILE" ]] && return 0
  log "generating certificates and kubeconfig in $d"
  mkdir -p "$d"
  (
    cd "$d" || exit
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kubevents-test-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    cat >apiserver.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    openssl rand -hex 24 >admin.token
    printf '%s,admin,admin,"system:masters"\n' "$(cat admin.token)" >tokens.csv
  )
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubevents
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 "$d/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$d/admin.token")
contexts:
- name: kubevents
  context: {cluster: kubevents, user: admin, namespace: default}
current-context: kubevents
EOF
  chmod 600 "$KUBECONFIG_FILE"
  touch "$d/.complete"
}

etcd_healthy() { curl -fsS http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
apiserver_ready() { curl -fsS --cacert "$K8S_STATE/ca.crt" https://127.0.0.1:6443/readyz >/dev/null; }

start_etcd() {
  mkdir -p "$DATA/etcd" && chmod 700 "$DATA/etcd"  # etcd warns about wider permissions
  start_bg etcd "$BIN/etcd" --name=kubevents --data-dir="$DATA/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=kubevents=http://127.0.0.1:2380 \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd 60 etcd_healthy
}

start_apiserver() {
  local d="$K8S_STATE"
  # --advertise-address: there may be no default route to guess it from. Loopback is refused by the
  # endpoint reconciler (the "kubernetes" Service endpoints), hence --endpoint-reconciler-type=none.
  # --kubelet-preferred-address-types=InternalIP: never resolve fake node hostnames through DNS.
  start_bg kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --etcd-servers=http://127.0.0.1:2379 \
    --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --client-ca-file="$d/ca.crt" --token-auth-file="$d/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --event-ttl=1h \
    --watch-cache-sizes=events#0  # watches of events go to etcd: compaction gives real 410s, as in clusters that do this
  wait_for kube-apiserver 120 apiserver_ready
}

start_controllers() {
  local d="$K8S_STATE"
  # --leader-elect=false: a single instance, so it starts working at once.
  start_bg kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" --bind-address=127.0.0.1 --secure-port=10257 \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" \
    --cluster-signing-cert-file="$d/ca.crt" --cluster-signing-key-file="$d/ca.key"
  start_bg kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_FILE" --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false
  is_running kwok || release_node_leases
  local configs=() f
  for f in "$STAGES"/*.yaml; do configs+=("--config=$f"); done
  # Node IP 127.0.0.1 and kwok's server on loopback: anything the apiserver sends to a "kubelet"
  # (logs, exec) stays on this machine. Pod IPs are only strings in pod status.
  start_bg kwok "$BIN/kwok" --kubeconfig="$KUBECONFIG_FILE" "${configs[@]}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --server-address="127.0.0.1:$KWOK_PORT" --node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
    --cidr=10.244.0.0/16 --node-lease-duration-seconds=40
}

# kwok only drives the nodes whose Lease it holds, under a random identity per process: after a
# restart it would leave pods Pending until the previous holder's lease expires (40 s). The old
# holder is dead, so hand the leases back now. renewTime stays, so the nodes do not go NotReady.
release_node_leases() {
  local n
  for n in "${NODES[@]}"; do
    kubectl -n kube-node-lease patch lease "$n" --type=merge -p '{"spec":{"holderIdentity":null}}' \
      >/dev/null 2>&1 || true
  done
}

# Status is kept on create (kwok's own docs create nodes this way); kwok fills in conditions.
create_nodes() {
  local i manifest=""
  for i in "${!NODES[@]}"; do
    manifest+="
---
apiVersion: v1
kind: Node
metadata:
  name: ${NODES[$i]}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: ${NODES[$i]}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
spec:
  podCIDR: 10.244.$((i * 4)).0/22
  podCIDRs: [10.244.$((i * 4)).0/22]
status:
  allocatable: {cpu: \"64\", memory: 256Gi, pods: \"1000\"}
  capacity: {cpu: \"64\", memory: 256Gi, pods: \"1000\"}
"
  done
  local missing=0
  for i in "${NODES[@]}"; do kubectl get node "$i" >/dev/null 2>&1 || missing=1; done
  ((missing)) || return 0
  log "creating fake nodes ${NODES[*]}"
  kubectl create -f - <<<"$manifest" 2>&1 | grep -v AlreadyExists >&2 || true
}

cmd_start() {
  installed || die "kubernetes binaries missing: run $0 install"
  gen_credentials
  start_etcd
  start_apiserver
  start_controllers
  create_nodes
}

# ---------------------------------------------------------------------------------------------
# wait / stop / status / env

default_sa_exists() { kubectl -n default get serviceaccount default; }
# Ready alone can be stale data from before a restart; a held lease means a live kwok drives the node.
nodes_ready() {
  local ready held
  ready="$(kubectl get nodes "${NODES[@]}" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  held="$(kubectl -n kube-node-lease get leases "${NODES[@]}" \
    -o jsonpath='{range .items[*]}{.spec.holderIdentity}{"\n"}{end}' | grep -c .)"
  ((ready == ${#NODES[@]} && held == ${#NODES[@]}))
}

cmd_wait() {
  wait_for kube-apiserver 120 apiserver_ready
  wait_for kube-controller-manager 60 default_sa_exists
  wait_for kwok 60 nodes_ready
}

cmd_stop() {
  local p
  for p in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_bg "$p"; done
}

cmd_status() {
  local p rc=0
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    if is_running "$p"; then printf '%-24s running (pid %s)\n' "$p" "$(cat "$RUN/$p.pid")"
    else printf '%-24s stopped\n' "$p"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  stop) cmd_stop ;;
  # The fault suite's "API server restarted": the apiserver alone, etcd and the rest stay up.
  restart-apiserver) stop_bg kube-apiserver && start_apiserver ;;
  status) cmd_status ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_FILE" ;;
  *) echo "usage: $0 install|start|wait|stop|restart-apiserver|status|env" >&2; exit 2 ;;
esac
