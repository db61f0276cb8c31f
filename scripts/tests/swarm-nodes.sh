#!/usr/bin/env bash
# Test swarm nodes on this machine: N worker nodes, each a container of images/swarm-node running
# its own Docker Engine, joined to this machine's swarm and able to pull from the local registry.
# They are this project's own test hosts for the multi-node tests (scripts/tests/test-multinode.sh);
# a real node is a real server (README, "Adding a node").
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NODE_PREFIX="${STACKSHIP_PROJECT}-node"
# Carried by the node containers and, as a node label, by the swarm nodes they run.
NODE_LABEL="${STACKSHIP_PROJECT}.test-node"
NODE_IMAGE="${STACKSHIP_PROJECT}-test/swarm-node:bookworm"
NODES_DIR="${STACKSHIP_DATA}/swarm-nodes"
RELAY_PID_FILE="${NODES_DIR}/registry-relay.pid"
MAX_NODES=5

usage() {
    cat <<USAGE
Usage: scripts/tests/swarm-nodes.sh up N [--label I:KEY=VALUE]...
       scripts/tests/swarm-nodes.sh down
       scripts/tests/swarm-nodes.sh ls

  up N     start worker nodes ${NODE_PREFIX}-1 .. ${NODE_PREFIX}-N (N <= ${MAX_NODES}) as containers
           and join them to this machine's swarm; nodes already up are kept. Each node gets
           the node labels ${NODE_LABEL}=<its name> and stackship.zone=<its name>, plus KEY=VALUE on node I for each
           --label I:KEY=VALUE. The local registry (scripts/up.sh) is relayed to them on the
           swarm's address, so images named ${STACKSHIP_REGISTRY_ADDR}/... pull on every node.
  down     drain every test node (its tasks move to the other nodes), remove the node
           containers and their swarm entries and stop the registry relay: the swarm is left
           with the nodes it had before 'up'.
  ls       the test nodes: name, swarm state, availability, labels.

The nodes run the stand-in Debian base with Debian's docker.io, dockerd with the vfs storage
driver on a tmpfs, without --privileged (see the README's multi-node section). Needs root, a
swarm that advertises an address the containers reach (scripts/up.sh initialises it on the
docker0 bridge), and the local registry.
USAGE
}

# node_containers: names of the test node containers, running or not.
node_containers() { docker ps -a --filter "label=${NODE_LABEL}" --format '{{.Names}}' | sort; }

# test_nodes: swarm node IDs carrying the test-node label.
test_nodes() { docker node ls -q --filter "node.label=${NODE_LABEL}"; }

# manager_addr: the address this swarm advertises; refuses loopback, which containers cannot reach.
manager_addr() {
    local addr
    addr="$(docker info --format '{{.Swarm.NodeAddr}}')"
    if [[ "$addr" == 127.* || "$addr" == ::1 ]]; then
        die "this swarm advertises ${addr}, which node containers cannot reach. Swarm cannot change the address of an existing swarm: re-create it with 'scripts/down.sh --leave-swarm && scripts/up.sh' (this removes the stacks, their secrets and the databases; scripts/up.sh then initialises the swarm on the docker0 address $(swarm_local_addr))"
    fi
    printf '%s\n' "$addr"
}

relay_running() {
    local pid
    [[ -f "$RELAY_PID_FILE" ]] || return 1
    pid="$(cat "$RELAY_PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/${pid}/comm" 2>/dev/null)" == socat ]]
}

# relay_answers ADDR: the registry answers through the relay (401: it asks for credentials).
relay_answers() { [[ "$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$1:5000/v2/")" == 401 ]]; }

# start_relay ADDR: the local registry (loopback only) relayed on ADDR:5000 for the nodes.
start_relay() {
    local addr="$1"
    registry_up || die "the local registry does not answer on ${STACKSHIP_REGISTRY_ADDR} (run scripts/up.sh first)"
    if relay_running; then
        relay_answers "$addr" || die "the registry relay (pid $(cat "$RELAY_PID_FILE")) runs but ${addr}:5000 does not answer"
        return 0
    fi
    need_cmd socat socat
    mkdir -p "$NODES_DIR"
    log "relaying the registry ${STACKSHIP_REGISTRY_ADDR} on ${addr}:5000 (log: ${NODES_DIR}/registry-relay.log)"
    spawn_daemon "${NODES_DIR}/registry-relay.log" \
        socat "TCP-LISTEN:5000,bind=${addr},fork,reuseaddr" "TCP:${STACKSHIP_REGISTRY_ADDR}"
    echo "$SPAWNED_PID" > "$RELAY_PID_FILE"
    wait_until 15 "the registry relay on ${addr}:5000" relay_answers "$addr"
}

stop_relay() {
    relay_running || { rm -f "$RELAY_PID_FILE"; return 0; }
    local pid
    pid="$(cat "$RELAY_PID_FILE")"
    log "stopping the registry relay (pid ${pid})"
    kill "$pid"
    wait_until 10 "the registry relay to stop" bash -c "! kill -0 ${pid} 2>/dev/null"
    rm -f "$RELAY_PID_FILE"
}

# build_node_image: images/swarm-node on the Debian base the stack's images use.
build_node_image() {
    local base
    local err
    err="$(mktemp)"
    # Its banners (stand-ins) were shown by scripts/up.sh; here only a failure is news.
    base="$("$(repo_root)/scripts/base-images.sh" 2>"$err" | sed -n 's/^BASE_IMAGE=//p')" \
        || die "scripts/base-images.sh failed: $(tail -n 5 "$err")"
    [[ -n "$base" ]] || die "scripts/base-images.sh named no BASE_IMAGE: $(tail -n 5 "$err")"
    rm -f "$err"
    log "building ${NODE_IMAGE} (from ${base})"
    docker build -q --build-arg "BASE_IMAGE=${base}" -t "$NODE_IMAGE" "$(repo_root)/images/swarm-node" >/dev/null \
        || die "building ${NODE_IMAGE} failed"
}

# node_id NAME: the swarm node ID of a running node container ('' when it is in no swarm).
node_id() { docker exec "$1" docker info --format '{{.Swarm.NodeID}}' 2>/dev/null || true; }

node_ready() { [[ "$(docker node inspect "$1" --format '{{.Status.State}}' 2>/dev/null)" == ready ]]; }

# node_up NAME: the container runs and its engine is a ready node of this swarm.
node_up() {
    local id
    [[ "$(docker inspect "$1" --format '{{.State.Running}}' 2>/dev/null)" == true ]] || return 1
    id="$(node_id "$1")"
    [[ -n "$id" ]] && node_ready "$id"
}

# remove_node NAME: the container and its swarm entry (a stopped or broken node).
remove_node() {
    local name="$1" id
    # By label, and by hostname: a node that joined but failed before it was labelled.
    id="$( (docker node ls -q --filter "node.label=${NODE_LABEL}=${name}"
        docker node ls --format '{{.ID}} {{.Hostname}}' | awk -v n="$name" '$2 == n { print $1 }') | sort -u)"
    docker rm -f "$name" >/dev/null 2>&1 || true
    if [[ -n "$id" ]]; then
        # shellcheck disable=SC2086  # one ID per word
        docker node rm --force $id >/dev/null
    fi
}

# start_node NAME ADDR TOKEN LABELS...: one worker node container, joined and labelled.
start_node() {
    local name="$1" addr="$2" token="$3" ip id label
    shift 3
    log "starting node ${name}"
    # The capabilities of --privileged but SYS_RESOURCE, which this machine's bounding set lacks;
    # dockerd needs the cgroup tree, its state on an exec tmpfs (vfs: no overlay inside overlay).
    docker run -d --name "$name" --hostname "$name" --label "${NODE_LABEL}=${name}" --init \
        --cap-add ALL --cap-drop SYS_RESOURCE \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /var/lib/docker:exec \
        -e "REGISTRY_UPSTREAM=${addr}:5000" \
        "$NODE_IMAGE" --storage-driver=vfs "--cgroup-parent=/${name}" --log-level=warn >/dev/null \
        || die "could not start the node container ${name}"
    wait_until 60 "the engine in ${name}" docker exec "$name" docker info
    ip="$(docker inspect "$name" --format '{{.NetworkSettings.IPAddress}}')"
    [[ -n "$ip" ]] || die "${name} has no address on the default bridge"
    docker exec "$name" docker swarm join --token "$token" --advertise-addr "$ip" "${addr}:2377" >/dev/null \
        || die "${name} could not join the swarm at ${addr}:2377"
    id="$(node_id "$name")"
    [[ -n "$id" ]] || die "${name} joined but has no node ID"
    wait_until 60 "node ${name} to be ready" node_ready "$id"
    # Its own zone: the stacks spread backend and frontend replicas over stackship.zone.
    docker node update --label-add "${NODE_LABEL}=${name}" --label-add "stackship.zone=${name}" "$id" >/dev/null
    for label in "$@"; do
        docker node update --label-add "$label" "$id" >/dev/null
    done
    log "node ${name} (${ip}) joined as ${id}${*:+ with ${*}}"
}

cmd_up() {
    local count="${1:-}" addr token i name
    if ! [[ "$count" =~ ^[1-9][0-9]*$ ]] || ((count > MAX_NODES)); then
        die "up needs a node count from 1 to ${MAX_NODES} (got '${count}')"
    fi
    shift
    local -A labels=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --label)
                [[ "${2:-}" =~ ^([1-9][0-9]*):([A-Za-z0-9._-]+=[A-Za-z0-9._-]*)$ ]] \
                    || die "--label needs I:KEY=VALUE (node number, label), got '${2:-}'"
                ((BASH_REMATCH[1] <= count)) || die "--label ${2}: there is no node ${BASH_REMATCH[1]} of ${count}"
                labels[${BASH_REMATCH[1]}]+="${BASH_REMATCH[2]} "
                shift
                ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    require_root
    ensure_docker
    ensure_swarm
    addr="$(manager_addr)"
    start_relay "$addr"
    build_node_image
    token="$(docker swarm join-token -q worker)"
    for ((i = 1; i <= count; i++)); do
        name="${NODE_PREFIX}-${i}"
        local node_labels=()
        read -r -a node_labels <<<"${labels[$i]:-}"
        if node_up "$name"; then
            log "node ${name} is up"
            for label in "${node_labels[@]}"; do
                docker node update --label-add "$label" "$(node_id "$name")" >/dev/null
            done
            continue
        fi
        remove_node "$name"
        start_node "$name" "$addr" "$token" "${node_labels[@]}"
    done
    cmd_ls
}

cmd_down() {
    require_root
    local name id ids
    ids="$(test_nodes)"
    for id in $ids; do
        [[ "$(docker node inspect "$id" --format '{{.Status.State}}')" == ready ]] || continue
        log "draining node $(docker node inspect "$id" --format '{{.Description.Hostname}}')"
        docker node update --availability drain "$id" >/dev/null
    done
    for id in $ids; do
        # Bounded: a task that cannot be placed elsewhere (a constraint) stays where it is.
        local deadline=$((SECONDS + 60))
        while [[ -n "$(docker node ps "$id" --filter desired-state=running -q 2>/dev/null)" ]] && ((SECONDS < deadline)); do
            sleep 1
        done
    done
    for name in $(node_containers); do
        log "removing node ${name}"
        docker exec "$name" docker swarm leave --force >/dev/null 2>&1 || true
        docker rm -f "$name" >/dev/null
    done
    for id in $(test_nodes); do
        docker node rm --force "$id" >/dev/null
    done
    stop_relay
    [[ -z "$(test_nodes)" && -z "$(node_containers)" ]] || die "test nodes are left: $(test_nodes) $(node_containers)"
    log "no test nodes left; the swarm has $(docker node ls -q | wc -l) node(s)"
}

cmd_ls() {
    local id
    printf '%-20s %-8s %-8s %s\n' NODE STATE AVAIL LABELS
    for id in $(test_nodes); do
        docker node inspect "$id" --format '{{printf "%-20s %-8s %-8s" .Description.Hostname .Status.State .Spec.Availability}} {{range $k, $v := .Spec.Labels}}{{$k}}={{$v}} {{end}}'
    done
}

main() {
    case "${1:-}" in
        up) shift; cmd_up "$@" ;;
        down) shift; [[ $# -eq 0 ]] || die "down takes no arguments"; cmd_down ;;
        ls) cmd_ls ;;
        -h | --help) usage ;;
        *) usage >&2; die "expected up N, down or ls" ;;
    esac
}

main "$@"
