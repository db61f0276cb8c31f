#!/usr/bin/env bash
# Deploys one environment's stack on a Swarm manager. Runs in the deploy directory
# (/data/stackship/deploy), where the copy step put: this script, config-hasher,
# docker-compose.<env>.yaml and deploy-manifests/<env>/.
#
# Validates everything first (arguments, images, config-hasher --check, the stack file, external
# secrets, the database node), then logs in, deploys with --with-registry-auth, waits until every
# service finished its rollout (and fails when one did not, e.g. it rolled back), and finally
# removes the stack's configs that neither the current nor the previous service specs use.
set -Eeuo pipefail

PROJECT="stackship"
SCRIPT_NAME="deploy"
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Keys deploy.env may set; the environment wins over the file.
ENV_FILE_KEYS=(REGISTRY REGISTRY_USER REGISTRY_PASSWORD IMAGE_TAG BACKEND_TAG FRONTEND_TAG
    POSTGRES_IMAGE NGINX_IMAGE ROLLOUT_TIMEOUT)
TAG_RE='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'

ENVIRONMENT=""
STACK=""
COMPOSE=""

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed${2:+ ($2)}"; }

usage() {
    cat <<'USAGE'
Usage: deploy.sh --prod|--dev [--tag TAG] [--timeout SECONDS]

Deploys docker-compose.<env>.yaml from this directory as stack stackship-<env>.

Options:
  --prod | --dev     the environment (required)
  --tag TAG          image tag of the project's services (default: $IMAGE_TAG)
  --timeout SECONDS  how long the rollout may take (default: $ROLLOUT_TIMEOUT or 600)
  -h, --help         this help

Environment (also read from ./deploy.env, KEY=VALUE lines; the environment wins):
  REGISTRY            image registry host[:port] (default: $CI_REGISTRY)
  REGISTRY_USER       registry login user     (default: $CI_REGISTRY_USER)
  REGISTRY_PASSWORD   registry login password (default: $CI_REGISTRY_PASSWORD);
                      without user and password no login is done
  IMAGE_TAG           tag for every project image; BACKEND_TAG / FRONTEND_TAG override one
  POSTGRES_IMAGE, NGINX_IMAGE   third-party images (default: the stack file's)

Exit status: 0 when every service completed its rollout, 1 otherwise.
USAGE
}

# load_env_file: KEY=VALUE lines from ./deploy.env for keys not already set. Not sourced.
load_env_file() {
    local file="$DEPLOY_DIR/deploy.env" line key value allowed
    [[ -f "$file" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        [[ "$line" == *=* ]] || die "deploy.env: line '${line}' is not KEY=VALUE"
        key="${line%%=*}"
        value="${line#*=}"
        allowed=""
        local k
        for k in "${ENV_FILE_KEYS[@]}"; do
            [[ "$k" == "$key" ]] && allowed=1
        done
        [[ -n "$allowed" ]] || die "deploy.env: unknown key '${key}' (allowed: ${ENV_FILE_KEYS[*]})"
        if [[ -z "${!key:-}" ]]; then
            export "$key=$value"
        fi
    done < "$file"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --prod | --dev)
                [[ -z "$ENVIRONMENT" ]] || die "give exactly one of --prod / --dev"
                ENVIRONMENT="${1#--}"
                ;;
            --tag)
                [[ $# -ge 2 ]] || die "--tag needs a value"
                IMAGE_TAG="$2"
                shift
                ;;
            --timeout)
                [[ $# -ge 2 ]] || die "--timeout needs a value"
                ROLLOUT_TIMEOUT="$2"
                shift
                ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    [[ -n "$ENVIRONMENT" ]] || { usage >&2; die "missing --prod or --dev"; }
    STACK="${PROJECT}-${ENVIRONMENT}"
    COMPOSE="docker-compose.${ENVIRONMENT}.yaml"
}

resolve_settings() {
    load_env_file
    REGISTRY="${REGISTRY:-${CI_REGISTRY:-}}"
    REGISTRY_USER="${REGISTRY_USER:-${CI_REGISTRY_USER:-}}"
    REGISTRY_PASSWORD="${REGISTRY_PASSWORD:-${CI_REGISTRY_PASSWORD:-}}"
    IMAGE_TAG="${IMAGE_TAG:-}"
    BACKEND_TAG="${BACKEND_TAG:-$IMAGE_TAG}"
    FRONTEND_TAG="${FRONTEND_TAG:-$IMAGE_TAG}"
    ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-600}"

    [[ -n "$REGISTRY" ]] || die "REGISTRY (or CI_REGISTRY) is not set"
    [[ "$REGISTRY" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] \
        || die "REGISTRY '${REGISTRY}' is not host[:port][/path]"
    [[ -n "$BACKEND_TAG" && -n "$FRONTEND_TAG" ]] \
        || die "no image tag: give --tag, IMAGE_TAG, or BACKEND_TAG and FRONTEND_TAG"
    [[ "$BACKEND_TAG" =~ $TAG_RE ]] || die "BACKEND_TAG '${BACKEND_TAG}' is not a valid image tag"
    [[ "$FRONTEND_TAG" =~ $TAG_RE ]] || die "FRONTEND_TAG '${FRONTEND_TAG}' is not a valid image tag"
    [[ "$ROLLOUT_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout '${ROLLOUT_TIMEOUT}' is not a number of seconds"
    if [[ -n "$REGISTRY_USER" && -z "$REGISTRY_PASSWORD" ]] || [[ -z "$REGISTRY_USER" && -n "$REGISTRY_PASSWORD" ]]; then
        die "set both REGISTRY_USER and REGISTRY_PASSWORD, or neither"
    fi
    export REGISTRY BACKEND_TAG FRONTEND_TAG
    [[ -z "${POSTGRES_IMAGE:-}" ]] || export POSTGRES_IMAGE
    [[ -z "${NGINX_IMAGE:-}" ]] || export NGINX_IMAGE
}

check_prerequisites() {
    need docker "install the Docker engine"
    need awk
    [[ -f "$DEPLOY_DIR/$COMPOSE" ]] || die "${DEPLOY_DIR}/${COMPOSE} is missing (run the copy step for ${ENVIRONMENT})"
    [[ -d "$DEPLOY_DIR/deploy-manifests/$ENVIRONMENT" ]] \
        || die "${DEPLOY_DIR}/deploy-manifests/${ENVIRONMENT} is missing (run the copy step for ${ENVIRONMENT})"
    if [[ -x "$DEPLOY_DIR/config-hasher" ]]; then
        CONFIG_HASHER="$DEPLOY_DIR/config-hasher"
    elif command -v config-hasher >/dev/null 2>&1; then
        CONFIG_HASHER="$(command -v config-hasher)"
    else
        die "config-hasher is neither in ${DEPLOY_DIR} nor on PATH"
    fi
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"
    [[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" == "true" ]] \
        || die "this engine is not a swarm manager"
}

registry_login() {
    if [[ -z "$REGISTRY_USER" ]]; then
        log "no registry credentials given: using the engine's existing login for ${REGISTRY}"
        return 0
    fi
    log "docker login ${REGISTRY} as ${REGISTRY_USER}"
    printf '%s' "$REGISTRY_PASSWORD" \
        | docker login --username "$REGISTRY_USER" --password-stdin "${REGISTRY%%/*}" >/dev/null \
        || die "docker login to ${REGISTRY} failed"
}

hash_configs() {
    log "config-hasher --${ENVIRONMENT} --check"
    "$CONFIG_HASHER" "--${ENVIRONMENT}" --check || die "config-hasher rejected ${COMPOSE}"
    local exports
    exports="$("$CONFIG_HASHER" "--${ENVIRONMENT}" --format export)" || die "config-hasher failed"
    eval "$exports"
    log "config names: $(printf '%s' "$exports" | sed -e "s/^export //" -e "s/'//g" | tr '\n' ' ')"
}

validate_stack_file() {
    if docker stack --help 2>/dev/null | grep -qE '^[[:space:]]+config[[:space:]]'; then
        docker stack config -c "$COMPOSE" >/dev/null || die "${COMPOSE} is not a valid stack file"
    else
        log "this docker CLI has no 'docker stack config': stack file validation left to the deploy"
    fi
}

# external_secrets: names of the stack file's top-level secrets (they are all external).
external_secrets() {
    awk '
        /^[^ #]/ { in_secrets = ($0 ~ /^secrets:/) ; next }
        in_secrets && /^    name:/ { print $2 }
    ' "$COMPOSE"
}

check_secrets() {
    local name missing=()
    while IFS= read -r name; do
        [[ -n "$name" ]] || continue
        docker secret inspect "$name" >/dev/null 2>&1 || missing+=("$name")
    done < <(external_secrets)
    [[ ${#missing[@]} -eq 0 ]] || die "missing swarm secrets: ${missing[*]} (create them with 'docker secret create NAME FILE')"
}

# check_database_node: the postgres service is pinned to a node labelled stackship.postgres=true;
# the data directory is created when that node is this one.
check_database_node() {
    local nodes self data_dir="/data/${PROJECT}/data/${ENVIRONMENT}/postgres"
    nodes="$(docker node ls -q --filter node.label=stackship.postgres=true)"
    [[ -n "$nodes" ]] || die "no node has the label stackship.postgres=true (docker node update --label-add stackship.postgres=true NODE)"
    [[ "$(wc -l <<<"$nodes")" -eq 1 ]] || die "more than one node has the label stackship.postgres=true"
    self="$(docker info --format '{{.Swarm.NodeID}}')"
    if [[ "$nodes" == "$self" ]]; then
        mkdir -p "$data_dir"
    fi
}

pull_images() {
    local image
    for image in "${REGISTRY}/${PROJECT}/backend:${BACKEND_TAG}" "${REGISTRY}/${PROJECT}/frontend:${FRONTEND_TAG}"; do
        log "checking ${image}"
        docker pull -q "$image" >/dev/null || die "cannot pull ${image}"
    done
}

# service_state NAME: "<update state>|<update started at>|<version index>".
service_state() {
    docker service inspect "$1" \
        --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.StartedAt}}{{else}}|{{end}}|{{.Version.Index}}' \
        2>/dev/null || printf '||\n'
}

stack_services() { docker stack services "$STACK" --format '{{.Name}}' 2>/dev/null | sort; }

running_replicas() {
    docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null \
        | grep -c '^Running' || true
}

desired_replicas() {
    docker service inspect "$1" --format '{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{else}}-1{{end}}'
}

declare -A BEFORE=()

record_state() {
    local svc
    while IFS= read -r svc; do
        [[ -n "$svc" ]] && BEFORE["$svc"]="$(service_state "$svc")"
    done < <(stack_services)
}

deploy_stack() {
    log "docker stack deploy ${STACK} (backend ${BACKEND_TAG}, frontend ${FRONTEND_TAG})"
    # The rollout is watched below; newer CLIs would otherwise wait (and still exit 0 after a
    # rollback). Older CLIs have no --detach and never wait.
    local detach=()
    if docker stack deploy --help 2>/dev/null | grep -q -- '--detach'; then
        detach=(--detach=true)
    fi
    docker stack deploy --with-registry-auth --prune "${detach[@]}" -c "$COMPOSE" "$STACK" >&2 \
        || die "docker stack deploy failed"
}

# wait_rollout: every service either finished a new update ("completed"), or had none and runs
# all its replicas. A rollback or a paused update fails the deploy. Bounded by ROLLOUT_TIMEOUT.
wait_rollout() {
    local started=$SECONDS deadline=$((SECONDS + ROLLOUT_TIMEOUT)) svc state before pending failed
    local -A finished=() rolling_back=()
    failed=()
    while :; do
        pending=()
        while IFS= read -r svc; do
            [[ -n "$svc" && -z "${finished[$svc]:-}" ]] || continue
            state="$(service_state "$svc")"
            before="${BEFORE[$svc]:-||}"
            local upd="${state%%|*}" started_at
            started_at="$(cut -d'|' -f2 <<<"$state")"
            if [[ -n "$upd" && "$started_at" != "$(cut -d'|' -f2 <<<"$before")" ]]; then
                case "$upd" in
                    completed) finished[$svc]=ok; log "${svc}: update completed" ;;
                    rollback_paused | rollback_completed | paused)
                        finished[$svc]=failed; failed+=("${svc} (${upd})")
                        log "${svc}: update failed: ${upd}" ;;
                    rollback_started)
                        # Wait for the rollback to finish, so the stack is settled on exit.
                        [[ -n "${rolling_back[$svc]:-}" ]] || log "${svc}: update failed, rolling back"
                        rolling_back[$svc]=1
                        pending+=("$svc") ;;
                    *) pending+=("$svc") ;;
                esac
            elif ((SECONDS - started >= 5)) \
                && [[ "$(running_replicas "$svc")" -ge "$(desired_replicas "$svc")" ]]; then
                finished[$svc]=ok
                log "${svc}: running ($(running_replicas "$svc")/$(desired_replicas "$svc")), no update needed"
            else
                pending+=("$svc")
            fi
        done < <(stack_services)
        [[ ${#pending[@]} -eq 0 ]] && break
        if ((SECONDS >= deadline)); then
            failed+=("${pending[@]/%/ (timed out)}")
            break
        fi
        sleep 2
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        for svc in $(stack_services); do
            docker service ps "$svc" --no-trunc --format '{{.Name}} {{.Image}} {{.CurrentState}} {{.Error}}' 2>/dev/null \
                | head -n 5 >&2 || true
        done
        die "rollout of ${STACK} failed: ${failed[*]}"
    fi
    log "rollout of ${STACK} complete in $((SECONDS - started))s"
}

# prune_configs: remove this stack's configs that no service spec (current or previous, which
# a rollback returns to) references.
prune_configs() {
    local used config svc
    used="$(for svc in $(stack_services); do
        docker service inspect "$svc" --format \
            '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{println .ConfigName}}{{end}}{{if .PreviousSpec}}{{range .PreviousSpec.TaskTemplate.ContainerSpec.Configs}}{{println .ConfigName}}{{end}}{{end}}'
    done | sort -u)"
    while IFS= read -r config; do
        [[ -n "$config" ]] || continue
        if ! grep -qxF "$config" <<<"$used"; then
            log "removing unused config ${config}"
            docker config rm "$config" >/dev/null || log "could not remove config ${config} (still in use?)"
        fi
    done < <(docker config ls --filter "label=com.docker.stack.namespace=${STACK}" --format '{{.Name}}')
}

main() {
    parse_args "$@"
    cd "$DEPLOY_DIR"
    resolve_settings
    check_prerequisites
    hash_configs
    validate_stack_file
    check_secrets
    check_database_node
    registry_login
    pull_images
    record_state
    deploy_stack
    wait_rollout
    prune_configs
    log "${STACK} deployed"
}

main "$@"
