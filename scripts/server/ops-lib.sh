# shellcheck shell=bash
# Shared by the day-2 scripts that run on a Swarm manager (db-backup.sh,
# db-restore.sh, db-tunnel.sh, secret.sh): logging, an environment's stack and directory, what
# the running services use, and one-off helper tasks on the stack's network. The copy step
# ships this file beside stackship in <env dir>/current/, so it needs nothing from the
# repository. Source it; it defines functions and runs nothing.
#
# A one-off helper is a swarm service with one task that is never restarted. The swarm picks its
# node, so it reaches services on any node (Postgres included), which `docker exec` cannot:
#
#   ops_env prod                    # OPS_ENV, OPS_STACK, OPS_ENV_DIR; exit traps armed
#   ops_db_helper_args              # OPS_DB_ARGS: Postgres's image, the password, PG* variables
#   ops_helper backup "${OPS_DB_ARGS[@]}" --bind /srv/backups:/backup \
#       -- bash -c 'PGPASSWORD="$(cat /run/secrets/db_password)" exec pg_dump -Fc -f /backup/x'
#
# ops_helper waits until the task finished, copies its log to stderr and returns its exit status;
# with --detach it returns once the task runs and leaves it running. Every helper is removed when
# the script exits, however it exits (Ctrl-C included). Never put a secret value in a helper's
# arguments or --env (both are in `docker service inspect`): mount it with --secret and read it
# from /run/secrets/ inside.

OPS_PROJECT="${STACKSHIP_PROJECT:-stackship}"
# The script that was run, in progress lines.
OPS_SCRIPT="$(basename "${BASH_SOURCE[-1]}" .sh)"
# Where the script itself lives: a release directory (<env dir>/current) or the repository.
OPS_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$OPS_SCRIPT" "$*" >&2; }
warn() { printf '%s [%s] WARNING: %s\n' "$(date -u +%H:%M:%S)" "$OPS_SCRIPT" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$OPS_SCRIPT" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed${2:+ ($2)}"; }

# Helper services this script created (removed at exit), and commands to run at exit.
OPS_HELPERS=()
OPS_EXIT_HOOKS=()

# ops_on_exit CMD: run CMD (a string, eval'd) when the script exits, after the helpers are gone.
ops_on_exit() { OPS_EXIT_HOOKS+=("$1"); }

# ops_cleanup: the exit trap: removes every helper service (and waits, at most 30 s, until their
# containers on this node are gone), then runs the exit hooks, last registered first (so a
# network a helper used can go after the helper).
ops_cleanup() {
    local rc=$? i svc deadline=$((SECONDS + 30))
    trap - EXIT INT TERM
    for svc in "${OPS_HELPERS[@]}"; do
        if docker service rm "$svc" >/dev/null 2>&1; then
            log "removed helper ${svc}"
        else
            warn "could not remove helper service ${svc}: remove it with 'docker service rm ${svc}'"
        fi
    done
    for svc in "${OPS_HELPERS[@]}"; do
        while [[ -n "$(docker ps -aq --filter "label=com.docker.swarm.service.name=${svc}" 2>/dev/null)" ]] \
            && ((SECONDS < deadline)); do
            sleep 0.5
        done
    done
    for ((i = ${#OPS_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${OPS_EXIT_HOOKS[i]}" || true
    done
    exit "$rc"
}

# ops_helper_rm SERVICE: removes a helper now rather than at exit (a secret it mounts cannot be
# removed while the helper exists), waiting at most 30 s until its containers on this node are
# gone.
ops_helper_rm() {
    local svc="$1" kept=() h deadline=$((SECONDS + 30))
    docker service rm "$svc" >/dev/null 2>&1 || warn "could not remove helper service ${svc}"
    while [[ -n "$(docker ps -aq --filter "label=com.docker.swarm.service.name=${svc}" 2>/dev/null)" ]] \
        && ((SECONDS < deadline)); do
        sleep 0.5
    done
    for h in "${OPS_HELPERS[@]}"; do
        [[ "$h" == "$svc" ]] || kept+=("$h")
    done
    OPS_HELPERS=("${kept[@]}")
}

# ops_env ENV: checks ENV (dev or prod) and the swarm, sets OPS_ENV, OPS_STACK (the stack) and
# OPS_ENV_DIR (the environment's deploy directory: the parent of the release this script runs
# from, else $STACKSHIP_DEPLOY_ROOT/ENV, default /data/stackship/deploy/ENV), and arms the exit
# traps (Ctrl-C and SIGTERM end the script through them).
ops_env() {
    [[ "$1" == dev || "$1" == prod ]] || die "unknown environment '$1' (expected dev or prod)"
    OPS_ENV="$1"
    OPS_STACK="${OPS_PROJECT}-${OPS_ENV}"
    # shellcheck disable=SC2034  # read by the scripts that source this file
    if [[ "$(basename "$OPS_HOME")" == current && -d "$OPS_HOME/deploy-manifests/$OPS_ENV" ]]; then
        OPS_ENV_DIR="$(dirname "$OPS_HOME")"
    else
        OPS_ENV_DIR="${STACKSHIP_DEPLOY_ROOT:-/data/${OPS_PROJECT}/deploy}/${OPS_ENV}"
    fi
    trap ops_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    need docker "install the Docker engine"
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"
    [[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" == "true" ]] \
        || die "this engine is not a swarm manager (run on the manager of ${OPS_STACK})"
}

# ops_lock: takes the environment's deploy lock (as stackship does, on descriptor 9, waiting at
# most LOCK_WAIT seconds, default 900), so no deploy runs meanwhile; held until the script exits.
# stackship deploy run from here gets STACKSHIP_DEPLOY_LOCK_FD=9 and does not wait for it.
ops_lock() {
    local lock="${OPS_ENV_DIR}/deploy.lock" wait="${LOCK_WAIT:-900}"
    need flock "apt-get install util-linux"
    [[ -d "$OPS_ENV_DIR" ]] || die "${OPS_ENV_DIR} does not exist (no ${OPS_ENV} deploy on this manager)"
    exec 9>>"$lock" || die "cannot open the lock file ${lock}"
    if ! flock -n 9; then
        log "a ${OPS_ENV} deploy holds ${lock} ($(cat "${lock}.owner" 2>/dev/null || echo 'unknown holder')); waiting up to ${wait}s"
        flock -w "$wait" 9 || die "the ${OPS_ENV} deploy lock is still held after ${wait}s (${lock})"
    fi
    printf 'pid %s on %s (%s), started %s\n' "$$" "$(hostname)" "$OPS_SCRIPT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "${lock}.owner"
}

# ops_service SERVICE: the full name of a service of the stack; dies when it does not run.
ops_service() {
    local name="${OPS_STACK}_$1"
    docker service inspect "$name" >/dev/null 2>&1 || die "service ${name} does not exist (is ${OPS_STACK} deployed?)"
    printf '%s\n' "$name"
}

# ops_service_image SERVICE: the image (with its digest) a service of the stack runs.
ops_service_image() {
    docker service inspect "$(ops_service "$1")" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}'
}

# ops_service_secret SERVICE TARGET: the name of the secret a service mounts at TARGET.
ops_service_secret() {
    local name
    name="$(docker service inspect "$(ops_service "$1")" \
        --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.File.Name}} {{.SecretName}}{{"\n"}}{{end}}' \
        | awk -v t="$2" '$1 == t { print $2 }')"
    [[ -n "$name" ]] || die "service ${OPS_STACK}_$1 mounts no secret at ${2}"
    printf '%s\n' "$name"
}

# ops_service_env SERVICE KEY [DEFAULT]: a variable of a service's spec.
ops_service_env() {
    local value
    value="$(docker service inspect "$(ops_service "$1")" \
        --format '{{range .Spec.TaskTemplate.ContainerSpec.Env}}{{println .}}{{end}}' \
        | sed -n "s/^$2=//p" | head -n 1)"
    printf '%s\n' "${value:-${3:-}}"
}

# ops_db_helper_args: OPS_DB_ARGS, the ops_helper options of a database client: Postgres's own
# image (its pg_dump matches the server), the password the backend uses now (its db_password
# secret, at /run/secrets/db_password), PGHOST/PGUSER/PGDATABASE; on the stack's data network.
ops_db_helper_args() {
    local user db
    user="$(ops_service_env postgres POSTGRES_USER postgres)"
    db="$(ops_service_env postgres POSTGRES_DB "$user")"
    # shellcheck disable=SC2034  # read by the caller
    OPS_DB_ARGS=(--image "$(ops_service_image postgres)"
        --secret "$(ops_service_secret backend db_password):db_password"
        --env PGHOST=postgres --env "PGUSER=${user}" --env "PGDATABASE=${db}")
}

# ops_task_state SERVICE: "state|exit code|error" of a helper's task (empty: no task yet).
ops_task_state() {
    local task
    task="$(docker service ps "$1" -q --no-trunc 2>/dev/null | head -n 1)"
    [[ -n "$task" ]] || return 0
    docker inspect "$task" --format '{{.Status.State}}|{{.Status.ContainerStatus.ExitCode}}|{{.Status.Err}}' 2>/dev/null || true
}

# ops_helper NAME [OPTIONS] -- CMD [ARG...]: runs CMD once as a swarm service named
# <stack>-ops-NAME-<pid> on the stack's network and removes it when the script exits.
#   --image IMAGE         the image (default: the stack's Postgres image)
#   --entrypoint CMD      replace the image's entrypoint
#   --secret NAME:TARGET  mount the swarm secret NAME at /run/secrets/TARGET (root, 0400)
#   --env KEY=VALUE       a variable (never a secret: it is in the service spec)
#   --network NET         attach to NET too (the stack's data network always)
#   --bind DIR:TARGET[:ro]  bind-mount DIR of this node; the helper then runs on this node
#   --user USER           run as USER (default: the image's)
#   --timeout S           how long it may take (default 600); then it fails
#   --detach              return once the task runs; OPS_HELPER names its service
# Without --detach: waits until the task ended, copies its log to stderr, returns its exit status
# (1 when it could not start, with the task's error). The task has a read-only root filesystem,
# no capabilities, and an init as PID 1.
ops_helper() {
    local name="$1" image="" timeout=600 detach="" svc state task_state code err deadline self
    # --init: the command is not PID 1, so SIGTERM stops it as it would anywhere else.
    local -a opts=(--restart-condition none --endpoint-mode dnsrr --read-only --cap-drop ALL
        --init --stop-grace-period 5s --with-registry-auth --detach --quiet --label "${OPS_PROJECT}.ops-helper=${OPS_SCRIPT}"
        --network "${OPS_STACK}_data")
    shift
    [[ "$name" =~ ^[a-z0-9][a-z0-9-]{0,20}$ ]] || die "ops_helper: bad helper name '${name}'"
    while [[ $# -gt 0 && "$1" != -- ]]; do
        [[ $# -ge 2 ]] || [[ "$1" == --detach ]] || die "ops_helper: $1 needs a value"
        case "$1" in
            --image) image="$2"; shift ;;
            --entrypoint) opts+=(--entrypoint "$2"); shift ;;
            --secret) opts+=(--secret "source=${2%%:*},target=${2#*:},uid=0,gid=0,mode=0400"); shift ;;
            --env) opts+=(--env "$2"); shift ;;
            --network) opts+=(--network "$2"); shift ;;
            --user) opts+=(--user "$2"); shift ;;
            --bind)
                local src dst ro=""
                IFS=: read -r src dst ro <<<"$2"
                [[ "$src" == /* && -d "$src" && "$dst" == /* ]] || die "ops_helper: --bind '$2' needs an existing DIR:TARGET (absolute)"
                opts+=(--mount "type=bind,source=${src},target=${dst}${ro:+,readonly}")
                self="$(docker info --format '{{.Swarm.NodeID}}')"
                opts+=(--constraint "node.id==${self}")
                shift
                ;;
            --timeout) [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "ops_helper: --timeout '$2' is not a number"; timeout="$2"; shift ;;
            --detach) detach=1 ;;
            *) die "ops_helper: unknown option '$1'" ;;
        esac
        shift
    done
    [[ "${1:-}" == -- && $# -ge 2 ]] || die "ops_helper: no command given (NAME [OPTIONS] -- CMD...)"
    shift
    [[ -n "${OPS_STACK:-}" ]] || die "ops_helper: call ops_env first"
    [[ -n "$image" ]] || image="$(ops_service_image postgres)"
    svc="${OPS_STACK}-ops-${name}-$$"
    docker service create "${opts[@]}" --name "$svc" "$image" "$@" >/dev/null \
        || die "could not create the helper service ${svc} (image ${image})"
    OPS_HELPERS+=("$svc")
    # shellcheck disable=SC2034  # read by the caller
    OPS_HELPER="$svc"
    log "helper ${svc} started (${image})"
    deadline=$((SECONDS + timeout))
    while :; do
        task_state="$(ops_task_state "$svc")"
        IFS='|' read -r state code err <<<"$task_state"
        case "$state" in
            running) [[ -z "$detach" ]] || return 0 ;;
            complete | failed) break ;;
            rejected | shutdown | orphaned | remove)
                die "helper ${svc} did not run: ${state}${err:+: ${err}}" ;;
        esac
        ((SECONDS < deadline)) || die "helper ${svc} still ${state:-not scheduled} after ${timeout}s${err:+ (${err})}"
        sleep 0.5
    done
    [[ -z "$detach" ]] || die "helper ${svc} ended (${state}, exit ${code:-?}) before it was running${err:+: ${err}}"
    # Bounded: docker service logs can hang when a node does not answer.
    timeout 30 docker service logs --raw "$svc" >&2 2>/dev/null || true
    [[ "$state" == complete ]] && return 0
    log "helper ${svc} failed: exit ${code:-?}${err:+ (${err})}"
    code="${code:-1}"
    ((code > 0)) || code=1
    return "$code"
}
