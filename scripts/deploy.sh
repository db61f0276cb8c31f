#!/usr/bin/env bash
# Deploys one environment's stack on a Swarm manager. Runs from the environment's release
# directory (/data/stackship/deploy/<env>/current), where the copy step put: this script,
# config-hasher, rollout-watcher, docker-compose.<env>.yaml and deploy-manifests/<env>/.
# Beside it, in /data/stackship/deploy/<env>/: deploy.env (local settings), deploy.lock, the
# deploy records (history/) and the last rollout report (last-rollout.json).
#
# Takes the environment's deploy lock (waiting a bounded time, naming who holds it), validates
# everything (arguments, images, config-hasher --check, the stack file, the external secrets
# and configs it names, the database node), logs in, snapshots the stack, deploys with --with-registry-auth, and has
# rollout-watcher follow every service until it settled: a rollback, a paused update, a crash
# loop or a timeout fails the deploy with Swarm's message, the task error and its last log
# lines. A successful deploy is recorded, then configs and secrets that neither the current or
# previous specs nor the last PRUNE_KEEP deploys use are removed.
set -Eeuo pipefail

PROJECT="stackship"
SCRIPT_NAME="deploy"
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The environment's directory: settings, lock and records outlive each copy of the release.
ENV_DIR="$(dirname "$DEPLOY_DIR")"
# Keys deploy.env may set; the environment wins over the file.
ENV_FILE_KEYS=(REGISTRY REGISTRY_USER REGISTRY_PASSWORD IMAGE_TAG BACKEND_TAG FRONTEND_TAG
    POSTGRES_IMAGE NGINX_IMAGE PROMETHEUS_IMAGE ROLLOUT_TIMEOUT LOCK_WAIT PRUNE_KEEP MAX_TASK_FAILURES
    REVIEW_MAX_STACKS REVIEW_PORT_BASE)
# A tag, optionally pinned to one image by digest (TAG@sha256:...; rollback.sh deploys those).
TAG_RE='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[0-9a-f]{64})?$'
# The project's images: <SERVICE>_TAG names each one's tag, in the pins and the settings.
IMAGE_SERVICES=(backend frontend)
# Third-party images, SERVICE:VARIABLE: the variable (a pin in images.env, or a setting) names
# the whole image, always by digest (repo[:tag]@sha256:...), so a republished tag never
# changes a service on a deploy that did not mean to; scripts/pin-image.sh resolves digests.
# Only those of services the stack file has count (prometheus runs in prod only).
THIRD_PARTY_IMAGES=(postgres:POSTGRES_IMAGE nginx-proxy:NGINX_IMAGE prometheus:PROMETHEUS_IMAGE)
IMAGE_REF_RE='^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$'
DIGEST_REF_RE='^[A-Za-z0-9][A-Za-z0-9._/:-]*@sha256:[0-9a-f]{64}$'

ENVIRONMENT=""
STACK=""
COMPOSE=""
PRINT_IMAGES=""
# --review IID: the merge request's review stack, a copy of dev (see review_prepare).
REVIEW_IID=""
SETTINGS_FILE=""

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed${2:+ ($2)}"; }

usage() {
    cat <<'USAGE'
Usage: deploy.sh --prod|--dev [--tag TAG] [--timeout SECONDS] [--print-images]
       deploy.sh --review IID [...]

Deploys docker-compose.<env>.yaml from this directory as stack stackship-<env>.

Options:
  --prod | --dev     the environment (required)
  --review IID       the review stack stackship-review-IID of merge request IID instead, from
                     docker-compose.review.yaml: dev's pins, config files and settings (the
                     dev environment's deploy.env), its own throwaway database and password
                     secret (made here at the first deploy), on host port REVIEW_PORT_BASE +
                     IID (default 20000 + IID); at most REVIEW_MAX_STACKS (default 4) review
                     stacks at once. review-stop.sh IID removes it.
  --tag TAG          image tag of the project's services (default: $IMAGE_TAG, else the pins)
  --timeout SECONDS  how long the rollout may take (default: $ROLLOUT_TIMEOUT, else derived
                     by rollout-watcher from each service's update and healthcheck settings)
  --print-images     print each image this deploy would run (the project's and the
                     third-party ones), with where its tag or digest comes from, and exit
                     (no Docker needed)
  -h, --help         this help

Image tags: deploy-manifests/<env>/images.env pins each service's tag (BACKEND_TAG=...,
FRONTEND_TAG=...; scripts/pin-image.sh edits it). --tag / IMAGE_TAG and <SERVICE>_TAG, from the
environment or deploy.env, override the pins. The third-party images are pinned by digest
there too (POSTGRES_IMAGE=postgres:15-bookworm@sha256:...; scripts/pin-image.sh ENV postgres
IMAGE resolves it), and POSTGRES_IMAGE / NGINX_IMAGE / PROMETHEUS_IMAGE override them (each
only where the stack file has that service: Prometheus runs in prod); a third-party image
without @sha256: stops the deploy before anything changes. Every image is pulled before the
deploy starts.

Environment (also read from ../deploy.env, KEY=VALUE lines; the environment wins):
  REGISTRY            image registry host[:port] (default: $CI_REGISTRY)
  REGISTRY_USER       registry login user     (default: $CI_REGISTRY_USER)
  REGISTRY_PASSWORD   registry login password (default: $CI_REGISTRY_PASSWORD);
                      without user and password no login is done
  IMAGE_TAG           tag for every project image; BACKEND_TAG / FRONTEND_TAG override one
  POSTGRES_IMAGE, NGINX_IMAGE, PROMETHEUS_IMAGE   third-party images,
                      repo:tag@sha256:<digest> (default: the pins); a reference without a
                      digest is refused
  LOCK_WAIT           seconds to wait for another deploy of this environment (default 900)
  PRUNE_KEEP          deploys whose configs and secrets are kept (default 3)
  MAX_TASK_FAILURES   a new service fails after this many task failures (default 3)
  DB_PASSWORD_SECRET  the database password secret (default: the newest
                      stackship-<env>-db-password-v<N>; scripts/secret.sh makes them)
  NEW_DATABASE=1      environment only: start an EMPTY database where the stack's Postgres
                      exists but the node labelled stackship.postgres.<env> has no data
                      directory (a database moved on purpose; restore a backup after)

Placement: the proxy runs on a node labelled stackship.edge=true, Postgres on the one node
labelled stackship.postgres.<env>=true (its data directory is created there at the first
deploy, on another node by a one-off task); a single-node swarm gets the labels here, on several
nodes a missing label or a node that is not ready and active stops the deploy.

Secrets: external ones (the database password) must exist (scripts/secret.sh). File-backed
ones (prod's TLS certificate and key) are read from ../secrets/ beside this release and named
by content like the configs, so a changed file rolls exactly the services that mount it.

Exit status: 0 when every service settled healthy on its new spec, 1 otherwise.
USAGE
}

# load_env_file: KEY=VALUE lines from ./deploy.env for keys not already set. Not sourced.
load_env_file() {
    local file="${SETTINGS_FILE:-$ENV_DIR/deploy.env}" line key value allowed
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

# load_pins: PIN_<SERVICE>_TAG from deploy-manifests/<env>/images.env, the committed tag of
# each service in this environment, and PIN_POSTGRES_IMAGE / PIN_NGINX_IMAGE /
# PIN_PROMETHEUS_IMAGE, the third-party images by digest (KEY=VALUE lines, not sourced; an empty value: not pinned).
load_pins() {
    local file="$DEPLOY_DIR/deploy-manifests/$ENVIRONMENT/images.env" line key value svc allowed entry
    PINS_FILE="deploy-manifests/${ENVIRONMENT}/images.env"
    for svc in "${IMAGE_SERVICES[@]}"; do
        printf -v "PIN_${svc^^}_TAG" '%s' ""
    done
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        printf -v "PIN_${entry#*:}" '%s' ""
    done
    [[ -f "$file" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        [[ "$line" == *=* ]] || die "${PINS_FILE}: line '${line}' is not KEY=VALUE"
        key="${line%%=*}"
        value="${line#*=}"
        allowed=""
        for entry in "${THIRD_PARTY_IMAGES[@]}"; do
            [[ "$key" == "${entry#*:}" ]] && allowed=image
        done
        if [[ "$allowed" == image ]]; then
            [[ -z "$value" || "$value" =~ $IMAGE_REF_RE ]] || die "${PINS_FILE}: ${key} '${value}' is not an image reference"
            printf -v "PIN_${key}" '%s' "$value"
            continue
        fi
        for svc in "${IMAGE_SERVICES[@]}"; do
            [[ "$key" == "${svc^^}_TAG" ]] && allowed=1
        done
        [[ -n "$allowed" ]] || die "${PINS_FILE}: unknown key '${key}' (one <SERVICE>_TAG per service: ${IMAGE_SERVICES[*]}; and the third-party images ${THIRD_PARTY_IMAGES[*]#*:})"
        [[ -z "$value" || "$value" =~ $TAG_RE ]] || die "${PINS_FILE}: ${key} '${value}' is not a valid image tag"
        printf -v "PIN_${key}" '%s' "$value"
    done < "$file"
}

# resolve_tags: each service's tag and where it came from: <SERVICE>_TAG (environment or
# deploy.env), else --tag / IMAGE_TAG, else the pin.
resolve_tags() {
    local svc var pin
    load_pins
    for svc in "${IMAGE_SERVICES[@]}"; do
        var="${svc^^}_TAG"
        pin="PIN_${var}"
        if [[ -n "${!var:-}" ]]; then
            printf -v "SOURCE_${var}" '%s' "$var"
        elif [[ -n "$IMAGE_TAG" ]]; then
            printf -v "$var" '%s' "$IMAGE_TAG"
            printf -v "SOURCE_${var}" '%s' "--tag/IMAGE_TAG"
        elif [[ -n "${!pin}" ]]; then
            printf -v "$var" '%s' "${!pin}"
            printf -v "SOURCE_${var}" '%s' "pin in ${PINS_FILE}"
        else
            die "no image tag for ${svc}: pin one (scripts/pin-image.sh ${ENVIRONMENT} ${svc} TAG, in ${PINS_FILE}) or give --tag, IMAGE_TAG or ${var}"
        fi
    done
}

# resolve_third_party: each third-party image and where it came from: the variable from the
# environment, else from deploy.env, else the pin. Every one must name a digest: a floating tag
# is refused here, before anything changed, with how to pin it.
resolve_third_party() {
    local entry svc var pin source image
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        svc="${entry%%:*}"
        var="${entry#*:}"
        pin="PIN_${var}"
        source="SOURCE_${var}"
        if [[ -n "${!var:-}" ]]; then
            [[ -n "${!source:-}" ]] || printf -v "$source" '%s' "${var} in ${ENV_DIR}/deploy.env"
        elif [[ -n "${!pin}" ]]; then
            printf -v "$var" '%s' "${!pin}"
            printf -v "$source" '%s' "pin in ${PINS_FILE}"
        else
            die "no image for ${svc}: pin ${var} by digest in ${PINS_FILE} (scripts/pin-image.sh ${ENVIRONMENT} ${svc%-proxy} IMAGE, on a machine whose Docker has the image) or set ${var}=repo:tag@sha256:<digest> in the environment or ${ENV_DIR}/deploy.env"
        fi
        image="${!var}"
        [[ "$image" =~ $IMAGE_REF_RE ]] || die "${var} '${image}' (${!source}) is not an image reference"
        [[ "$image" =~ $DIGEST_REF_RE ]] \
            || die "${var} '${image}' (${!source}) is not pinned by digest: a tag can be republished, and the next deploy would restart ${svc} with whatever it names now. Pin it: scripts/pin-image.sh ${ENVIRONMENT} ${svc%-proxy} ${image%@*} resolves repo:tag@sha256:<digest> with the local engine (commit ${PINS_FILE}), or set ${var}=repo:tag@sha256:<digest>"
        export "${var?}"
    done
}

# print_images: the images this deploy would run and where each tag or reference comes from.
print_images() {
    local svc var source entry
    for svc in "${IMAGE_SERVICES[@]}"; do
        var="${svc^^}_TAG"
        source="SOURCE_${var}"
        printf '%s %s/%s/%s:%s (%s)\n' "$svc" "$REGISTRY" "$PROJECT" "$svc" "${!var}" "${!source}"
    done
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        svc="${entry%%:*}"
        var="${entry#*:}"
        source="SOURCE_${var}"
        printf '%s %s (%s)\n' "$svc" "${!var}" "${!source}"
    done
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
            --print-images) PRINT_IMAGES=1 ;;
            --review)
                [[ -z "$ENVIRONMENT" ]] || die "give exactly one of --prod / --dev / --review"
                [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]{0,8}$ ]] || die "--review needs a merge request IID (a positive number)"
                ENVIRONMENT="dev"
                REVIEW_IID="$2"
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
    if [[ -n "$REVIEW_IID" ]]; then
        # A copy of dev: dev's pins and manifests (ENVIRONMENT), dev's deploy.env on this
        # manager (<root>/dev/, beside <root>/review/<iid>/ this release's directory).
        STACK="${PROJECT}-review-${REVIEW_IID}"
        COMPOSE="docker-compose.review.yaml"
        SETTINGS_FILE="$(dirname "$(dirname "$ENV_DIR")")/dev/deploy.env"
    fi
}

# stack_third_party_images: keeps the THIRD_PARTY_IMAGES whose service the stack file has (all of
# them when it is not there, e.g. a release staged without it).
stack_third_party_images() {
    local entry kept=()
    [[ -f "$DEPLOY_DIR/$COMPOSE" ]] || return 0
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        if grep -q "^  ${entry%%:*}:" "$DEPLOY_DIR/$COMPOSE"; then
            kept+=("$entry")
        fi
    done
    THIRD_PARTY_IMAGES=("${kept[@]}")
}

resolve_settings() {
    local entry var
    stack_third_party_images
    # Which third-party image settings come from the environment (deploy.env does not override).
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        var="${entry#*:}"
        printf -v "SOURCE_${var}" '%s' ""
        [[ -z "${!var:-}" ]] || printf -v "SOURCE_${var}" '%s' "${var} from the environment"
    done
    load_env_file
    REGISTRY="${REGISTRY:-${CI_REGISTRY:-}}"
    REGISTRY_USER="${REGISTRY_USER:-${CI_REGISTRY_USER:-}}"
    REGISTRY_PASSWORD="${REGISTRY_PASSWORD:-${CI_REGISTRY_PASSWORD:-}}"
    IMAGE_TAG="${IMAGE_TAG:-}"
    resolve_tags
    resolve_third_party
    ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-}"
    LOCK_WAIT="${LOCK_WAIT:-900}"
    PRUNE_KEEP="${PRUNE_KEEP:-3}"
    MAX_TASK_FAILURES="${MAX_TASK_FAILURES:-3}"

    [[ -n "$REGISTRY" ]] || die "REGISTRY (or CI_REGISTRY) is not set"
    [[ "$REGISTRY" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] \
        || die "REGISTRY '${REGISTRY}' is not host[:port][/path]"
    [[ "$BACKEND_TAG" =~ $TAG_RE ]] || die "BACKEND_TAG '${BACKEND_TAG}' is not a valid image tag"
    [[ "$FRONTEND_TAG" =~ $TAG_RE ]] || die "FRONTEND_TAG '${FRONTEND_TAG}' is not a valid image tag"
    [[ -z "$ROLLOUT_TIMEOUT" || "$ROLLOUT_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout '${ROLLOUT_TIMEOUT}' is not a number of seconds"
    [[ "$LOCK_WAIT" =~ ^[0-9]+$ ]] || die "LOCK_WAIT '${LOCK_WAIT}' is not a number of seconds"
    [[ "$PRUNE_KEEP" =~ ^[1-9][0-9]*$ ]] || die "PRUNE_KEEP '${PRUNE_KEEP}' is not a positive number"
    [[ "$MAX_TASK_FAILURES" =~ ^[1-9][0-9]*$ ]] || die "MAX_TASK_FAILURES '${MAX_TASK_FAILURES}' is not a positive number"
    if [[ -n "$REGISTRY_USER" && -z "$REGISTRY_PASSWORD" ]] || [[ -z "$REGISTRY_USER" && -n "$REGISTRY_PASSWORD" ]]; then
        die "set both REGISTRY_USER and REGISTRY_PASSWORD, or neither"
    fi
    export REGISTRY BACKEND_TAG FRONTEND_TAG
}

check_prerequisites() {
    need docker "install the Docker engine"
    need jq "apt-get install jq"
    need flock "apt-get install util-linux"
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
    if [[ -x "$DEPLOY_DIR/rollout-watcher" ]]; then
        WATCHER="$DEPLOY_DIR/rollout-watcher"
    elif command -v rollout-watcher >/dev/null 2>&1; then
        WATCHER="$(command -v rollout-watcher)"
    else
        die "rollout-watcher is neither in ${DEPLOY_DIR} nor on PATH"
    fi
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"
    [[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" == "true" ]] \
        || die "this engine is not a swarm manager"
}

# take_lock: one deploy of this environment at a time. The lock is flock(1) on a file in the
# environment directory: released when this process exits, however it exits.
take_lock() {
    local lock="$ENV_DIR/deploy.lock" owner="$ENV_DIR/deploy.lock.owner" holder
    # A caller that already holds the lock (e.g. a step that swapped in this release under it)
    # passes its descriptor in STACKSHIP_DEPLOY_LOCK_FD: the lock is then ours already.
    if [[ -n "${STACKSHIP_DEPLOY_LOCK_FD:-}" ]]; then
        [[ "$STACKSHIP_DEPLOY_LOCK_FD" =~ ^[0-9]+$ && "$(readlink -f "/proc/$$/fd/${STACKSHIP_DEPLOY_LOCK_FD}" 2>/dev/null)" == "$(readlink -f "$lock")" ]] \
            || die "STACKSHIP_DEPLOY_LOCK_FD=${STACKSHIP_DEPLOY_LOCK_FD} is not an open descriptor of ${lock}"
        flock -n "$STACKSHIP_DEPLOY_LOCK_FD" || die "STACKSHIP_DEPLOY_LOCK_FD does not hold ${lock}"
        log "holding the ${ENVIRONMENT} deploy lock (taken by the caller)"
        return 0
    fi
    exec 9>>"$lock" || die "cannot open the lock file ${lock}"
    if ! flock -n 9; then
        holder="$(cat "$owner" 2>/dev/null || true)"
        log "another ${ENVIRONMENT} deploy holds ${lock} (${holder:-unknown holder}); waiting up to ${LOCK_WAIT}s"
        flock -w "$LOCK_WAIT" 9 \
            || die "the ${ENVIRONMENT} deploy lock is still held after ${LOCK_WAIT}s by: ${holder:-unknown} (${lock})"
    fi
    printf 'pid %s on %s, started %s%s\n' "$$" "$(hostname)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "${CI_JOB_URL:+, job ${CI_JOB_URL}}" > "$owner"
    log "holding the ${ENVIRONMENT} deploy lock"
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

# hash_configs: config-hasher checks the stack file's configs and secrets and names the
# file-backed ones by content; its JSON report (kept in HASHED) also lists the external ones.
hash_configs() {
    # One run checks every entry and names them: it prints nothing unless all succeeded.
    log "config-hasher --compose ${COMPOSE} --format json"
    HASHED="$("$CONFIG_HASHER" --compose "$COMPOSE" --format json)" \
        || die "config-hasher rejected ${COMPOSE} (a secret's source file lives in ${ENV_DIR}/secrets/: the pipeline installs it from a CI File variable, scripts/up.sh on a local machine)"
    local var name names=()
    while IFS=$'\t' read -r var name; do
        [[ "$var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "config-hasher printed a bad variable name '${var}'"
        export "${var}=${name}"
        names+=("${var}=${name}")
    done < <(jq -r '.names | to_entries[] | "\(.key)\t\(.value)"' <<<"$HASHED")
    log "content names: ${names[*]:-none}"
}

# resolve_db_password: DB_PASSWORD_SECRET names the newest <stack>-db-password-v<N> (made by
# scripts/secret.sh init / rotate), unless the caller names one (a rotation does).
resolve_db_password() {
    local prefix="${STACK}-db-password-v" name best=0 n
    if [[ -n "${DB_PASSWORD_SECRET:-}" ]]; then
        [[ "$DB_PASSWORD_SECRET" == "$prefix"* ]] || die "DB_PASSWORD_SECRET '${DB_PASSWORD_SECRET}' is not one of ${prefix}<N>"
    else
        while IFS= read -r name; do
            n="${name#"$prefix"}"
            [[ "$n" =~ ^[1-9][0-9]{0,8}$ ]] || continue
            ((n > best)) && best="$n"
        done < <(docker secret ls --filter "name=${prefix}" --format '{{.Name}}')
        ((best > 0)) || die "no database password secret ${prefix}<N> exists: create it with scripts/secret.sh init db-password ${ENVIRONMENT}"
        DB_PASSWORD_SECRET="${prefix}${best}"
    fi
    export DB_PASSWORD_SECRET
    log "database password: ${DB_PASSWORD_SECRET}"
}

validate_stack_file() {
    # Help captured first: grep -q would close the pipe on the CLI while it still writes.
    local help
    help="$(docker stack --help 2>/dev/null || true)"
    if grep -qE '^[[:space:]]+config[[:space:]]' <<<"$help"; then
        docker stack config -c "$COMPOSE" >/dev/null || die "${COMPOSE} is not a valid stack file"
    else
        log "this docker CLI has no 'docker stack config': stack file validation left to the deploy"
    fi
}

# check_external: every external secret and config the stack file names exists. A name may be
# one ${VAR}, set above or in the environment (docker stack deploy expands it the same way).
check_external() {
    local kind name var missing=()
    while IFS=$'\t' read -r kind name; do
        if [[ "$name" =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
            var="${BASH_REMATCH[1]}"
            [[ -n "${!var:-}" ]] || die "${COMPOSE}: external ${kind} '${name}': ${var} is not set"
            name="${!var}"
        elif [[ "$name" == *'$'* ]]; then
            die "${COMPOSE}: external ${kind} name '${name}': use a plain name or exactly one \${VAR}"
        fi
        docker "$kind" inspect "$name" >/dev/null 2>&1 || missing+=("${kind} ${name}")
    done < <(jq -r '.skipped[] | select(.reason == "external") | "\(.kind)\t\(.name)"' <<<"$HASHED")
    [[ ${#missing[@]} -eq 0 ]] \
        || die "missing swarm objects: ${missing[*]} (create secrets with scripts/secret.sh, see its --help)"
}

# node_with_label LABEL: the IDs of the nodes whose label LABEL is "true", one per line.
node_with_label() { docker node ls -q --filter "node.label=$1=true"; }

# give_label NODE LABEL WHY: sets LABEL=true on NODE, saying why.
give_label() {
    log "labelling node $(docker node inspect "$1" --format '{{.Description.Hostname}}') $2=true ($3)"
    docker node update --label-add "$2=true" "$1" >/dev/null || die "cannot label node $1 with $2=true"
}

# check_placement: the node labels the stack's constraints need. The proxy runs on a node
# labelled stackship.edge=true, an environment's Postgres on the one node labelled
# stackship.postgres.<env>=true. A single-node swarm gets them (there is nothing to choose);
# on several nodes the operator chooses, and the deploy stops before anything changes.
# Swarms labelled before the label named the environment (stackship.postgres=true) keep
# their database node.
check_placement() {
    local self nodes count edge="stackship.edge" db="stackship.postgres.${ENVIRONMENT}"
    self="$(docker info --format '{{.Swarm.NodeID}}')" || die "docker info failed"
    SELF_NODE="$self"
    count="$(docker node ls -q | wc -l)"
    if [[ -z "$(node_with_label "$edge")" ]]; then
        ((count == 1)) || die "no node has the label ${edge}=true: choose the node(s) whose ports 80/443 the internet reaches (docker node update --label-add ${edge}=true NODE)"
        give_label "$self" "$edge" "the proxy runs there; the swarm has one node"
    fi
    local id states=""
    for id in $(node_with_label "$edge"); do
        states+="$(docker node inspect "$id" --format '{{.Description.Hostname}}: {{.Status.State}}, {{.Spec.Availability}}' 2>/dev/null || true); "
    done
    [[ "$states" == *": ready, active;"* ]] \
        || die "no node labelled ${edge}=true is ready and active (${states% }): the proxy could not run"
    if ((count > 1)) && [[ -z "$REGISTRY_USER" ]]; then
        log "WARNING: no registry credentials given on a swarm of ${count} nodes: the services keep this engine's login, and a task moved to another node later pulls with it or not at all (use a deploy token: REGISTRY_USER / REGISTRY_PASSWORD)"
    fi
    [[ -z "$REVIEW_IID" ]] || return 0
    nodes="$(node_with_label "$db")"
    if [[ -z "$nodes" ]]; then
        nodes="$(node_with_label stackship.postgres)"
        if [[ -n "$nodes" && "$(wc -l <<<"$nodes")" -eq 1 ]]; then
            give_label "$nodes" "$db" "it has the older label stackship.postgres=true"
        elif ((count == 1)); then
            give_label "$self" "$db" "the database runs there; the swarm has one node"
        else
            die "no node has the label ${db}=true: choose the node that keeps ${ENVIRONMENT}'s database (docker node update --label-add ${db}=true NODE)"
        fi
        nodes="$(node_with_label "$db")"
    fi
    [[ "$(wc -l <<<"$nodes")" -eq 1 ]] || die "more than one node has the label ${db}=true: one Postgres data directory lives on one node"
    DB_NODE="$nodes"
    local state
    state="$(docker node inspect "$DB_NODE" --format '{{.Description.Hostname}}: {{.Status.State}}, {{.Spec.Availability}}')" \
        || die "cannot inspect ${ENVIRONMENT}'s database node ${DB_NODE}"
    [[ "$state" == *": ready, active" ]] \
        || die "${ENVIRONMENT}'s database node (label ${db}) is not ready and active (${state}): Postgres could not run there; bring the node back (moving the label starts an EMPTY database: restore a backup there, README \"Adding a node\")"
}

# prepare_data_dir: Postgres's data directory exists on its node and belongs to the image's
# postgres user (uid 999): the server runs as that user, never as root, and cannot take the
# directory over itself. On this node the deploy does it (as root); on another node a one-off
# task pinned there does it (the Postgres image as root with CHOWN, DAC_OVERRIDE and FOWNER,
# the node's / mounted: root over that node's files for the few seconds it runs), unless
# Postgres already runs there. A missing or empty directory is created only for a stack
# without a database service yet (its first deploy) or with NEW_DATABASE=1: otherwise the
# database label moved (or the data was removed), and Postgres would start an EMPTY database.
prepare_data_dir() {
    [[ -z "$REVIEW_IID" ]] || return 0
    local data_dir="/data/${PROJECT}/data/${ENVIRONMENT}/postgres" host allow_new=0 refusal
    if [[ "${NEW_DATABASE:-}" == 1 ]] || ! docker service inspect "${STACK}_postgres" >/dev/null 2>&1; then
        allow_new=1
    fi
    host="$(docker node inspect "$DB_NODE" --format '{{.Description.Hostname}}')" || die "cannot inspect the database node ${DB_NODE}"
    refusal="there is no database in ${data_dir} on node ${host} (label stackship.postgres.${ENVIRONMENT}), but ${STACK}_postgres exists: the label moved or the data is gone, and Postgres would start an EMPTY database. Move the label back, or restore a backup there (README, \"Adding a node\"); to start an empty database on purpose, deploy with NEW_DATABASE=1"
    if [[ "$DB_NODE" == "$SELF_NODE" ]]; then
        if [[ ! -d "$data_dir" || -z "$(ls -A "$data_dir" 2>/dev/null)" ]] && ((allow_new == 0)); then
            # An unreadable directory (not root) is not an empty one.
            [[ -d "$data_dir" && ! -r "$data_dir" ]] || die "$refusal"
        fi
        [[ -d "$data_dir" ]] || install -d -m 0700 "$data_dir" 2>/dev/null \
            || die "cannot create ${data_dir} (as root: install -d -m 0700 -o 999 -g 999 ${data_dir}; scripts/setup-server.sh does it)"
        if [[ "$(stat -c %u "$data_dir")" != 999 ]]; then
            [[ "$(id -u)" == 0 ]] || die "${data_dir} must belong to uid 999, Postgres's user (as root: chown -R 999:999 ${data_dir})"
            log "giving ${data_dir} to uid 999 (Postgres's user)"
            chown -R 999:999 "$data_dir"
            chmod 0700 "$data_dir"
        fi
        return 0
    fi
    if docker service ps "${STACK}_postgres" --filter "node=${DB_NODE}" --filter desired-state=running \
        --format '{{.CurrentState}}' 2>/dev/null | grep -q '^Running'; then
        return 0
    fi
    DATADIR_HELPER="${STACK}-datadir-$$"
    log "preparing ${data_dir} on node ${host} (one-off task ${DATADIR_HELPER})"
    # Exit 3: missing or empty, and not to be created.
    # shellcheck disable=SC2016  # the script runs in the task
    docker service create --detach --quiet --name "$DATADIR_HELPER" --restart-condition none \
        --constraint "node.id==${DB_NODE}" --mount type=bind,source=/,target=/host \
        --user 0:0 --cap-drop ALL --cap-add CAP_CHOWN --cap-add CAP_DAC_OVERRIDE --cap-add CAP_FOWNER \
        --read-only --with-registry-auth --entrypoint sh --label "${PROJECT}.ops-helper=deploy" \
        "$POSTGRES_IMAGE" -c '
            d="/host$1"
            if [ ! -d "$d" ] || [ -z "$(ls -A "$d")" ]; then [ "$2" = 1 ] || exit 3; fi
            [ -d "$d" ] || install -d -m 0700 -o 999 -g 999 "$d" || exit 1
            if [ "$(stat -c %u "$d")" != 999 ]; then chown -R 999:999 "$d" && chmod 0700 "$d" || exit 1; fi' \
        sh "$data_dir" "$allow_new" >/dev/null \
        || die "cannot create the one-off task ${DATADIR_HELPER} on node ${host}"
    local state="" deadline=$((SECONDS + 300))
    while ((SECONDS < deadline)); do
        state="$(docker service ps "$DATADIR_HELPER" --no-trunc --format '{{.CurrentState}}|{{.Error}}' | head -n 1)"
        case "$state" in
            Complete*) break ;;
            Failed*"exit (3)"*) die "$refusal" ;;
            Failed* | Rejected* | Shutdown* | Orphaned*) die "preparing ${data_dir} on node ${host} failed: ${state#*|} (task ${state%%|*})" ;;
        esac
        sleep 1
    done
    [[ "$state" == Complete* ]] || die "preparing ${data_dir} on node ${host} did not finish in 300 s (task state: ${state:-none})"
    docker service rm "$DATADIR_HELPER" >/dev/null || true
    DATADIR_HELPER=""
    log "${data_dir} on node ${host} belongs to uid 999"
}

# review_prepare: what a review stack needs beyond dev's steps, under its lock: room (at most
# REVIEW_MAX_STACKS review stacks; a redeploy of this one always fits), its host port
# REVIEW_PORT, config names of its own (config-hasher's with the stack in front: two review
# stacks of the same files never share a config, so removing one never touches another's), and
# its database password: a secret <stack>-db-password-v1 from random bytes, piped into docker
# secret create, never on disk, labelled with the stack so `docker stack rm` removes it.
review_prepare() {
    local max="${REVIEW_MAX_STACKS:-4}" base="${REVIEW_PORT_BASE:-20000}" others var name
    [[ "$max" =~ ^[0-9]+$ ]] || die "REVIEW_MAX_STACKS '${max}' is not a number"
    [[ "$base" =~ ^[1-9][0-9]{0,4}$ ]] || die "REVIEW_PORT_BASE '${base}' is not a port number"
    others="$(docker stack ls --format '{{.Name}}' | grep -E "^${PROJECT}-review-[0-9]+\$" | grep -vxF "$STACK" || true)"
    if [[ -n "$others" && "$(wc -l <<<"$others")" -ge "$max" ]]; then
        die "${max} review stacks already run ($(tr '\n' ' ' <<<"$others")): stop one (review-stop) or raise REVIEW_MAX_STACKS in ${SETTINGS_FILE}"
    fi
    REVIEW_PORT=$((base + REVIEW_IID))
    ((REVIEW_PORT <= 65535)) || die "the review port ${base} + ${REVIEW_IID} is above 65535 (lower REVIEW_PORT_BASE)"
    export REVIEW_PORT
    while IFS=$'\t' read -r var name; do
        export "${var}=${STACK}_${name}"
    done < <(jq -r '.names | to_entries[] | "\(.key)\t\(.value)"' <<<"$HASHED")
    if ! docker secret ls --filter "name=${STACK}-db-password-v" --format '{{.Name}}' | grep -qE "^${STACK}-db-password-v[0-9]+\$"; then
        log "creating the review database password ${STACK}-db-password-v1 (random, never on disk)"
        head -c 32 /dev/urandom | base64 | tr -d '\n/+=' \
            | docker secret create --label "com.docker.stack.namespace=${STACK}" "${STACK}-db-password-v1" - >/dev/null \
            || die "cannot create the secret ${STACK}-db-password-v1"
    fi
    log "review stack ${STACK}: http port ${REVIEW_PORT}"
}

# pull_images: every image, the project's and the third-party ones, exists (and is on this
# node) before anything changes.
pull_images() {
    local svc var source image entry
    for svc in "${IMAGE_SERVICES[@]}"; do
        var="${svc^^}_TAG"
        source="SOURCE_${var}"
        image="${REGISTRY}/${PROJECT}/${svc}:${!var}"
        log "checking ${image} (${!source})"
        docker pull -q "$image" >/dev/null \
            || die "cannot pull ${image} (${svc} tag from ${!source}): is it built and pushed, and may this manager pull it?"
    done
    for entry in "${THIRD_PARTY_IMAGES[@]}"; do
        var="${entry#*:}"
        source="SOURCE_${var}"
        log "checking ${!var} (${!source})"
        docker pull -q "${!var}" >/dev/null \
            || die "cannot pull ${!var} (${var} from ${!source}): does that digest exist in its registry, and may this manager pull it?"
    done
}

snapshot() {
    SNAPSHOT="$(mktemp "${TMPDIR:-/tmp}/${STACK}-snapshot.XXXXXX")"
    "$WATCHER" snapshot "$STACK" --output "$SNAPSHOT" || die "cannot take a snapshot of ${STACK}"
}

deploy_stack() {
    log "docker stack deploy ${STACK} (backend ${BACKEND_TAG}, frontend ${FRONTEND_TAG})"
    # The rollout is watched below; newer CLIs would otherwise wait (and still exit 0 after a
    # rollback). Older CLIs have no --detach and never wait.
    local detach=() help
    help="$(docker stack deploy --help 2>/dev/null || true)"
    if grep -q -- '--detach' <<<"$help"; then
        detach=(--detach=true)
    fi
    docker stack deploy --with-registry-auth --prune "${detach[@]}" -c "$COMPOSE" "$STACK" >&2 \
        || die "docker stack deploy failed"
}

# watch_rollout: rollout-watcher follows every service until it settled; its summary goes to
# stdout, its report to last-rollout.json, and a successful deploy is recorded in history/.
watch_rollout() {
    local args=(watch "$STACK" --snapshot "$SNAPSHOT" --max-task-failures "$MAX_TASK_FAILURES"
        --json "$ENV_DIR/last-rollout.json" --record "$ENV_DIR/history") rc=0
    [[ -z "$ROLLOUT_TIMEOUT" ]] || args+=(--timeout "$ROLLOUT_TIMEOUT")
    log "following the rollout of ${STACK}"
    "$WATCHER" "${args[@]}" || rc=$?
    rm -f "$SNAPSHOT"
    case "$rc" in
        0) log "rollout of ${STACK} complete" ;;
        1) die "rollout of ${STACK} FAILED (see above; report: ${ENV_DIR}/last-rollout.json)" ;;
        *) die "rollout-watcher could not follow ${STACK} (exit ${rc})" ;;
    esac
}

# prune: configs and secrets no current/previous spec and none of the last PRUNE_KEEP deploys use.
prune() {
    log "pruning unused configs and secrets of ${STACK} (keeping the last ${PRUNE_KEEP} deploys)"
    "$WATCHER" prune "$STACK" --history "$ENV_DIR/history" --keep "$PRUNE_KEEP" >&2 \
        || log "WARNING: prune left some objects (see above); the deploy itself succeeded"
}

main() {
    parse_args "$@"
    SNAPSHOT="" DATADIR_HELPER="" DB_NODE="" SELF_NODE=""
    trap 'rm -f "${SNAPSHOT:-}"; [[ -z "${DATADIR_HELPER:-}" ]] || docker service rm "$DATADIR_HELPER" >/dev/null 2>&1' EXIT
    cd "$DEPLOY_DIR"
    resolve_settings
    if [[ -n "$PRINT_IMAGES" ]]; then
        print_images
        return 0
    fi
    check_prerequisites
    take_lock
    hash_configs
    [[ -z "$REVIEW_IID" ]] || review_prepare
    resolve_db_password
    check_external
    validate_stack_file
    # A review stack's database keeps its data in a volume of its own, not on a labelled node.
    check_placement
    registry_login
    pull_images
    prepare_data_dir
    snapshot
    deploy_stack
    watch_rollout
    prune
    log "${STACK} deployed"
}

main "$@"
