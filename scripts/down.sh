#!/usr/bin/env bash
# Removes what scripts/up.sh brought up: both stacks, their secrets and configs, the local
# registry (process and storage), the deploy directory (with the self-signed certificate) and,
# unless --keep-data, the database data and the database password secrets. The Docker engine, the swarm and the built
# images stay (other things on the machine may use them; images make the next bring-up fast);
# --images and --leave-swarm remove those too. --purge returns the machine to what a new one is
# as far as the project is concerned, so the test command can be run the way CI on a new machine
# runs it.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/down.sh [--keep-data] [--images] [--leave-swarm] [--purge] [--help]

  --keep-data     keep /data/stackship/data (databases) and the database password secrets
  --images        also remove the project's images (services, stand-ins, test images)
  --leave-swarm   also leave the swarm (docker swarm leave --force)
  --purge         everything the project made on this machine: every stackship-* stack (review
                  stacks too), the test nodes, the swarm (with all its configs and secrets; kept,
                  with a warning, when it runs services of other projects), the project's volumes
                  and images, the whole of /data/stackship (deploy directories, databases,
                  registry, caches, test artifacts) and the e2e test's deploy user. The Debian
                  packages the scripts installed (docker.io, postgresql, ...) and the running
                  Docker engine stay: every script installs and starts them when missing.
USAGE
}

stack_gone() {
    [[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$1")" ]] \
        && [[ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$1")" ]]
}

remove_stack() {
    local stack="$1"
    if docker stack ls --format '{{.Name}}' | grep -qxF "$stack"; then
        log "removing stack ${stack}"
        docker stack rm "$stack" >/dev/null
    fi
    # Tasks get their stop_grace_period (postgres: 60 s) before they are killed.
    wait_until 120 "stack ${stack} to stop" stack_gone "$stack"
}

# remove_secrets: the database passwords (every version and the bootstrap copy) and the fixed
# names older bring-ups used. The content-named TLS secrets went with their stack.
remove_secrets() {
    local env name
    for env in prod dev; do
        while IFS= read -r name; do
            case "$name" in
                "$(stack_name "$env")"-db-password-v* | "$(stack_name "$env")"-db-bootstrap-password \
                    | "$(stack_name "$env")"-db-password | "$(stack_name "$env")"-tls-cert | "$(stack_name "$env")"-tls-key)
                    log "removing secret ${name}"
                    docker secret rm "$name" >/dev/null
                    ;;
            esac
        done < <(docker secret ls --filter "name=$(stack_name "$env")-" --format '{{.Name}}')
    done
}

stop_registry() {
    local pid_file="${STACKSHIP_REGISTRY_DIR}/registry.pid" pid
    [[ -f "$pid_file" ]] || return 0
    pid="$(cat "$pid_file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == docker-registry ]]; then
        log "stopping the local registry (pid ${pid})"
        kill "$pid"
        wait_until 20 "the registry to stop" test ! -e "/proc/${pid}"
    fi
    rm -f "$pid_file"
}

remove_images() {
    local images
    images="$(docker images --format '{{.Repository}}:{{.Tag}}' \
        | grep -E "(^|/)${STACKSHIP_PROJECT}(-standin|-test)?/" || true)"
    [[ -n "$images" ]] || return 0
    log "removing $(wc -l <<<"$images") ${STACKSHIP_PROJECT} images"
    # shellcheck disable=SC2086  # one image reference per word
    docker rmi $images >/dev/null
}

# project_stacks: every stack of this project (dev, prod, review stacks).
project_stacks() { docker stack ls --format '{{.Name}}' | grep -E "^${STACKSHIP_PROJECT}-" || true; }

# foreign_services: services of the swarm that belong to no stack of this project.
foreign_services() {
    docker service ls --format '{{.Name}}' | grep -vE "^${STACKSHIP_PROJECT}-" || true
}

# remove_volumes: the project's volumes (review stacks' databases, ...), once their containers went.
remove_volumes() {
    local volumes
    volumes="$(docker volume ls -q | grep -E "^${STACKSHIP_PROJECT}-" || true)"
    [[ -n "$volumes" ]] || return 0
    log "removing $(wc -l <<<"$volumes") ${STACKSHIP_PROJECT} volumes"
    # shellcheck disable=SC2086  # one volume name per word
    docker volume rm $volumes >/dev/null
}

# purge_swarm: every project stack and the test nodes, then the swarm itself unless other
# projects run services in it.
purge_swarm() {
    local stack foreign
    for stack in $(project_stacks); do remove_stack "$stack"; done
    if [[ -n "$(docker ps -aq --filter "label=${STACKSHIP_PROJECT}.test-node")" ]]; then
        "$(dirname "${BASH_SOURCE[0]}")/tests/swarm-nodes.sh" down
    fi
    foreign="$(foreign_services)"
    if [[ -n "$foreign" ]]; then
        warn "the swarm runs services of other projects ($(paste -sd ' ' <<<"$foreign")): keeping it; removing only this project's secrets"
        remove_secrets
    else
        log "leaving the swarm (its configs, secrets and networks go with it)"
        docker swarm leave --force >/dev/null
    fi
}

# start_stopped_engine: a Docker engine that is installed but not running keeps its swarm,
# stacks, secrets and volumes on disk, and they come back when it starts: it is started, so
# that they can be removed (otherwise the next up.sh would find stacks without their data).
start_stopped_engine() {
    if command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
        ensure_docker
    fi
}

purge() {
    start_stopped_engine
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        [[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]] || purge_swarm
        remove_volumes
        remove_images
    fi
    stop_registry
    docker logout "$STACKSHIP_REGISTRY_ADDR" >/dev/null 2>&1 || true
    if id stackship-e2e >/dev/null 2>&1; then
        log "removing the e2e deploy user stackship-e2e"
        userdel -r stackship-e2e >/dev/null 2>&1 || warn "could not remove the user stackship-e2e"
    fi
    log "removing ${STACKSHIP_DATA}"
    rm -rf "$STACKSHIP_DATA"
    log "purged: the next scripts/up.sh or scripts/test.sh starts as on a new machine"
}

main() {
    local keep_data="" leave_swarm="" images="" purge=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --keep-data) keep_data=1 ;;
            --leave-swarm) leave_swarm=1 ;;
            --images) images=1 ;;
            --purge) purge=1 ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    require_root
    if [[ -n "$purge" ]]; then
        [[ -z "$keep_data" ]] || die "--purge removes the data: it cannot be combined with --keep-data"
        purge
        return 0
    fi
    need docker
    start_stopped_engine
    if docker info >/dev/null 2>&1 && [[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" == active ]]; then
        remove_stack "$(stack_name prod)"
        remove_stack "$(stack_name dev)"
        # Test nodes (scripts/tests/swarm-nodes.sh) would be left without their manager's registry.
        if [[ -n "$(docker ps -aq --filter "label=${STACKSHIP_PROJECT}.test-node")" ]]; then
            "$(dirname "${BASH_SOURCE[0]}")/tests/swarm-nodes.sh" down
        fi
        # The database data was initialised with these passwords: kept with it.
        [[ -n "$keep_data" ]] || remove_secrets
        if [[ -n "$leave_swarm" ]]; then
            log "leaving the swarm"
            docker swarm leave --force >/dev/null
        fi
    fi
    stop_registry
    if [[ -n "$images" ]] && docker info >/dev/null 2>&1; then
        remove_images
    fi
    docker logout "$STACKSHIP_REGISTRY_ADDR" >/dev/null 2>&1 || true
    log "removing ${STACKSHIP_DEPLOY_ROOT} and ${STACKSHIP_REGISTRY_DIR}"
    rm -rf "$STACKSHIP_DEPLOY_ROOT" "$STACKSHIP_REGISTRY_DIR"
    if [[ -z "$keep_data" ]]; then
        log "removing ${STACKSHIP_DATA}/data"
        rm -rf "${STACKSHIP_DATA}/data" "$STACKSHIP_LEGACY_SECRETS_DIR"
    fi
    log "down"
}

main "$@"
