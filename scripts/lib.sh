# shellcheck shell=bash
# Shared helpers for the stack scripts: logging, prerequisites, Docker engine, swarm, registry.
# Source it; it defines functions and defaults and runs nothing.

STACKSHIP_PROJECT="${STACKSHIP_PROJECT:-stackship}"
# Root of everything the local bring-up keeps on this machine.
STACKSHIP_DATA="${STACKSHIP_DATA:-/data/${STACKSHIP_PROJECT}}"
# Where each environment's deploy directory lives on the manager, as the pipeline puts them:
# <root>/<env>/current/ (stackship and the release), deploy.env, deploy.lock, history/.
STACKSHIP_DEPLOY_ROOT="${STACKSHIP_DEPLOY_ROOT:-${STACKSHIP_DATA}/deploy}"

# env_deploy_dir ENV: one environment's deploy directory.
env_deploy_dir() { printf '%s/%s\n' "$STACKSHIP_DEPLOY_ROOT" "$1"; }
# The local registry that stands in for GitLab Registry.
STACKSHIP_REGISTRY_ADDR="${STACKSHIP_REGISTRY_ADDR:-127.0.0.1:5000}"
STACKSHIP_REGISTRY_USER="${STACKSHIP_REGISTRY_USER:-stackship}"
# Host port of the dev proxy (prod publishes 80 and 443), as in docker-compose.dev.yaml.
STACKSHIP_DEV_HTTP_PORT=8880

# The name shown in progress lines: the script that was run (the outermost source), e.g. `up`.
STACKSHIP_SCRIPT="$(basename "${BASH_SOURCE[-1]}" .sh)"

# die exits with this status; a script whose exit statuses mean something else sets its own.
STACKSHIP_DIE_STATUS=1

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$STACKSHIP_SCRIPT" "$*" >&2; }
warn() { printf '%s [%s] WARNING: %s\n' "$(date -u +%H:%M:%S)" "$STACKSHIP_SCRIPT" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$STACKSHIP_SCRIPT" "$*" >&2; exit "$STACKSHIP_DIE_STATUS"; }

# repo_root: the working tree these scripts belong to.
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# tools_dir: where the deploy tools (config-hasher, rollout-watcher, stackship), built statically
# by scripts/ci/build-tools.sh, are: the pipeline's build job and scripts/up.sh put them there.
tools_dir() { printf '%s\n' "${STACKSHIP_TOOLS_DIR:-$(repo_root)/.build/tools}"; }

# need CMD [HINT]: fail with an install hint when CMD is missing.
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed${2:+ ($2)}"
}

# need_cmd CMD PACKAGE: install the Debian PACKAGE when CMD is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 && return 0
    apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "'$1' still missing after installing the package $2"
}

require_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (it installs packages and manages the Docker engine)"
}

# apt_install PKG...: install the Debian packages not yet installed, without prompts.
# Recommended packages only with APT_RECOMMENDS=1.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    require_root
    need apt-get "a Debian or Ubuntu host is expected"
    log "installing Debian packages: ${missing[*]}"
    # apt-get update once per run: lists may be missing or stale on a fresh machine.
    # DPkg::Lock::Timeout waits for another package manager instead of failing.
    if [[ -z "${STACKSHIP_APT_UPDATED:-}" ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || die "apt-get update failed"
        STACKSHIP_APT_UPDATED=1
    fi
    local recommends=(--no-install-recommends)
    [[ -z "${APT_RECOMMENDS:-}" ]] || recommends=()
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${recommends[@]}" "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# wait_until TIMEOUT_S DESCRIPTION CMD...: poll CMD every second until it succeeds.
wait_until() {
    local timeout="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for ${what}"
        sleep 1
    done
}

# spawn_daemon LOG CMD...: starts a long-lived daemon detached from this shell (own session,
# no stdin, output appended to LOG) without the file descriptors this shell inherited, so it
# never holds a caller's lock file (e.g. `flock FILE scripts/up.sh`) for the rest of its life.
spawn_daemon() {
    local logfile="$1"
    shift
    (
        local fd
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
        done
        exec setsid "$@" >>"$logfile" 2>&1 </dev/null
    ) &
    # shellcheck disable=SC2034 # read by the caller
    SPAWNED_PID=$!
}

# ensure_docker: Docker engine installed and answering.
ensure_docker() {
    if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
        # With its recommends (cgroupfs-mount, apparmor, ...), as Debian installs it.
        APT_RECOMMENDS=1 apt_install docker.io
    fi
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    require_root
    log "starting dockerd (log: /var/log/dockerd.log)"
    # Machines without an init system: start the daemon directly, detached from this shell.
    spawn_daemon /var/log/dockerd.log dockerd
    wait_until 60 "dockerd to answer" docker info
}

# swarm_local_addr: the address a swarm on this machine advertises: the docker0 bridge's, which
# this host and its containers (scripts/tests/swarm-nodes.sh's test nodes) reach, else loopback.
swarm_local_addr() {
    local addr
    addr="$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')"
    printf '%s\n' "${addr:-127.0.0.1}"
}

# ensure_swarm: this engine is a swarm manager (single-node swarm when it was not in one).
ensure_swarm() {
    local state
    state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
    case "$state" in
        active)
            [[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" == "true" ]] \
                || die "this engine is a swarm worker; run on a manager"
            ;;
        inactive)
            local addr
            addr="$(swarm_local_addr)"
            log "initialising a single-node swarm (advertising ${addr})"
            docker swarm init --advertise-addr "$addr" >/dev/null
            ;;
        *) die "swarm state is '${state}'; fix the swarm first (docker info)" ;;
    esac
}

# ensure_placement_labels: the node labels the stacks place services by, on this node when no
# node has them yet: stackship.edge=true (the proxy), stackship.postgres.<env>=true (each
# environment's database; the node of an older stackship.postgres=true label keeps it) and a
# stackship.zone (backend and frontend replicas spread over zones). Labels already on some
# node stay where they are: moving one is the operator's choice (README, "Adding a node").
ensure_placement_labels() {
    local self label legacy env
    self="$(docker info --format '{{.Swarm.NodeID}}')"
    if [[ -z "$(docker node ls -q --filter node.label=stackship.edge=true)" ]]; then
        log "labelling this node stackship.edge=true (the proxy runs here)"
        docker node update --label-add stackship.edge=true "$self" >/dev/null
    fi
    legacy="$(docker node ls -q --filter node.label=stackship.postgres=true)"
    [[ "$(wc -w <<<"$legacy")" -eq 1 ]] || legacy="$self"
    for env in prod dev; do
        label="stackship.postgres.${env}"
        if [[ -z "$(docker node ls -q --filter "node.label=${label}=true")" ]]; then
            log "labelling node $(docker node inspect "$legacy" --format '{{.Description.Hostname}}') ${label}=true (${env}'s database runs there)"
            docker node update --label-add "${label}=true" "$legacy" >/dev/null
        fi
    done
    if [[ -z "$(docker node inspect "$self" --format '{{index .Spec.Labels "stackship.zone"}}')" ]]; then
        docker node update --label-add "stackship.zone=$(docker node inspect "$self" --format '{{.Description.Hostname}}')" "$self" >/dev/null
    fi
}

# stack_name ENV: the swarm stack of an environment.
stack_name() { printf '%s-%s\n' "$STACKSHIP_PROJECT" "$1"; }

# check_env ENV: only dev and prod exist.
check_env() {
    [[ "$1" == dev || "$1" == prod ]] || die "unknown environment '$1' (expected dev or prod)"
}

# The local registry standing in for GitLab Registry (Debian's docker-registry).
STACKSHIP_REGISTRY_DIR="${STACKSHIP_REGISTRY_DIR:-${STACKSHIP_DATA}/registry}"
# Where older bring-ups kept generated secrets on disk; up.sh moves them into Swarm and removes it.
# shellcheck disable=SC2034  # used by up.sh and down.sh
STACKSHIP_LEGACY_SECRETS_DIR="${STACKSHIP_DATA}/secrets"
# The prod proxy's self-signed certificate (scripts/up.sh writes it with its key): the source
# file of prod's content-named tls_cert secret, and the CA to trust for https://localhost.
STACKSHIP_PROD_CERT="${STACKSHIP_DEPLOY_ROOT}/prod/secrets/tls.crt"

# registry_status: the HTTP status of the registry's /v2/ (401 = up with auth, 000 = down).
registry_status() {
    curl -s -o /dev/null -m 3 -w '%{http_code}' "http://${STACKSHIP_REGISTRY_ADDR}/v2/" || true
}

# registry_up: the registry answers and asks for credentials.
registry_up() { [[ "$(registry_status)" == 401 ]]; }

# registry_password: the generated password of the local registry user.
registry_password() {
    [[ -s "${STACKSHIP_REGISTRY_DIR}/password" ]] || die "no local registry password (run scripts/up.sh)"
    cat "${STACKSHIP_REGISTRY_DIR}/password"
}

# env_url ENV: the address of an environment's proxy on this machine.
env_url() {
    case "$1" in
        prod) printf 'https://localhost\n' ;;
        dev) printf 'http://localhost:%s\n' "$STACKSHIP_DEV_HTTP_PORT" ;;
        *) die "unknown environment '$1'" ;;
    esac
}

# curl_env ENV ARGS...: curl against an environment's proxy, trusting prod's self-signed cert.
curl_env() {
    local env="$1"
    shift
    if [[ "$env" == prod ]]; then
        curl -sS -m 10 --cacert "$STACKSHIP_PROD_CERT" "$@"
    else
        curl -sS -m 10 "$@"
    fi
}
