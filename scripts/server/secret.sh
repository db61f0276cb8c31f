#!/usr/bin/env bash
# Swarm secrets of the stacks, on the manager: created from a generated password or a file,
# and the database password rotated without a failed request.
#
# A generated password goes from memory straight into `docker secret create NAME -`: it is
# never written to disk or to a log, and shown (once, on the terminal) only with --show.
# Swarm secrets cannot be changed, only replaced: nothing here overwrites one.
#
# The database password is versioned: the backend mounts <stack>-db-password-v<N> (stackship deploy
# picks the newest), Postgres mounts <stack>-db-bootstrap-password, read only when it
# initialises an empty data directory. A rotation therefore changes the password inside
# PostgreSQL (ALTER ROLE, from a one-off task on the stack's database network), then rolls the
# backend onto the new secret through stackship deploy, and removes the old secret only after that
# rollout completed. Postgres keeps running throughout.
set -Eeuo pipefail

# shellcheck source=scripts/server/ops-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ops-lib.sh"

PROJECT="$OPS_PROJECT"
NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'
DEFAULT_LENGTH=32

usage() {
    cat <<USAGE
Usage: secret.sh create NAME [--length N] [--show]
       secret.sh create NAME --file FILE
       secret.sh init db-password ENV [--file FILE]
       secret.sh rotate db-password ENV
       secret.sh list [ENV]

  create NAME            a Swarm secret holding a generated password: ${DEFAULT_LENGTH} characters of
                         [A-Za-z0-9] (--length N: 16 to 256), from /dev/urandom. Never written to
                         disk or logs; --show prints it once on the terminal (refused when there is
                         no terminal, so it cannot land in a CI log).
  create NAME --file F   a Swarm secret holding the content of F (a certificate, a key).
  init db-password ENV   the first database password of ENV (dev or prod): one generated
                         password (or FILE's content) as stackship-ENV-db-password-v1, for the
                         backend, and stackship-ENV-db-bootstrap-password, for Postgres's first
                         start. Does nothing when both exist.
  rotate db-password ENV a new stackship-ENV-db-password-v<N+1>: ALTER ROLE in PostgreSQL, the
                         backend rolled onto it by stackship deploy (under ENV's deploy lock, watched
                         like any deploy), then the old version removed. If the rollout fails,
                         the old password is put back and the new secret removed.
  list [ENV]             the project's secrets (names, creation times; never values).

Every command refuses to replace an existing secret. Runs on a Swarm manager; the rotation uses
the environment's deploy directory (the parent of this release, else
\$STACKSHIP_DEPLOY_ROOT/ENV, default /data/stackship/deploy/ENV).
USAGE
}

# random_password LENGTH: LENGTH characters of [A-Za-z0-9] on stdout.
random_password() {
    local pw=""
    while ((${#pw} < $1)); do
        pw+="$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${pw:0:$1}"
}

check_name() {
    [[ "$1" =~ $NAME_RE ]] || die "secret name '$1' is not valid (letters, digits, '_', '.', '-'; at most 64; starts with a letter or digit)"
}

exists() { docker secret inspect "$1" >/dev/null 2>&1; }

refuse_existing() {
    local name
    for name in "$@"; do
        ! exists "$name" || die "secret ${name} already exists; secrets are never overwritten (create one under a new name, or rotate)"
    done
}

# store NAME VALUE [LABEL...]: docker secret create NAME from stdin; the value is never an argument.
store() {
    local name="$1" value="$2" label args=()
    shift 2
    for label in "${PROJECT}.managed-by=secret.sh" "$@"; do
        args+=(--label "$label")
    done
    printf '%s' "$value" | docker secret create "${args[@]}" "$name" - >/dev/null \
        || die "docker secret create ${name} failed"
    log "created secret ${name}"
}


cmd_create() {
    local name="${1:-}" length="$DEFAULT_LENGTH" file="" show_it="" value
    [[ -n "$name" && "$name" != -* ]] || die "create needs a NAME"
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --length) [[ $# -ge 2 ]] || die "--length needs a value"; length="$2"; shift ;;
            --file) [[ $# -ge 2 ]] || die "--file needs a path"; file="$2"; shift ;;
            --show) show_it=1 ;;
            *) die "create: unknown argument '$1'" ;;
        esac
        shift
    done
    check_name "$name"
    if [[ -n "$file" ]]; then
        [[ -z "$show_it" ]] || die "--show is for generated passwords, not --file"
        [[ -f "$file" && -r "$file" ]] || die "--file '${file}' is not a readable file"
        [[ -s "$file" ]] || die "--file '${file}' is empty (Swarm refuses empty secrets)"
        refuse_existing "$name"
        docker secret create --label "${PROJECT}.managed-by=secret.sh" "$name" "$file" >/dev/null \
            || die "docker secret create ${name} ${file} failed"
        log "created secret ${name} from ${file}"
        return 0
    fi
    if ! [[ "$length" =~ ^[0-9]{1,3}$ ]] || ((length < 16 || length > 256)); then
        die "--length '${length}' must be a number from 16 to 256"
    fi
    if [[ -n "$show_it" ]]; then
        { : > /dev/tty; } 2>/dev/null || die "--show needs a terminal (the password is never printed to a pipe or a log)"
    fi
    refuse_existing "$name"
    value="$(random_password "$length")"
    store "$name" "$value"
    # Once, on the controlling terminal only (checked above, before anything was created).
    [[ -z "$show_it" ]] || printf '%s\n' "$value" > /dev/tty
}

# env_names ENV: STACK, PW_PREFIX (the versioned password's prefix) and BOOTSTRAP.
env_names() {
    [[ "$1" == dev || "$1" == prod ]] || die "ENV must be dev or prod, not '${1}'"
    ENVIRONMENT="$1"
    STACK="${PROJECT}-${ENVIRONMENT}"
    PW_PREFIX="${STACK}-db-password-v"
    BOOTSTRAP="${STACK}-db-bootstrap-password"
}

# versions: the existing N of <stack>-db-password-v<N>, ascending.
versions() {
    local name n
    while IFS= read -r name; do
        n="${name#"$PW_PREFIX"}"
        if [[ "$name" == "$PW_PREFIX"* && "$n" =~ ^[1-9][0-9]{0,8}$ ]]; then printf '%s\n' "$n"; fi
    done < <(docker secret ls --filter "name=${PW_PREFIX}" --format '{{.Name}}') | sort -n
}

cmd_init() {
    local what="${1:-}" env="${2:-}" file="" value have
    [[ "$what" == db-password ]] || die "init: only 'db-password' can be initialised (got '${what}')"
    shift 2 || die "init db-password needs ENV"
    env_names "$env"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --file) [[ $# -ge 2 ]] || die "--file needs a path"; file="$2"; shift ;;
            *) die "init: unknown argument '$1'" ;;
        esac
        shift
    done
    have="$(versions | tail -n 1)"
    if [[ -n "$have" ]] && exists "$BOOTSTRAP"; then
        log "${ENVIRONMENT}: ${PW_PREFIX}${have} and ${BOOTSTRAP} exist; nothing to do"
        return 0
    fi
    [[ -z "$have" ]] || die "${PW_PREFIX}${have} exists but ${BOOTSTRAP} does not: they are made together; remove the stray one only if no database was initialised with it"
    ! exists "$BOOTSTRAP" || die "${BOOTSTRAP} exists but no ${PW_PREFIX}<N>: create ${PW_PREFIX}1 with the password Postgres was initialised with (secret.sh create ${PW_PREFIX}1 --file FILE)"
    if [[ -n "$file" ]]; then
        [[ -s "$file" && -r "$file" ]] || die "--file '${file}' is not a readable, non-empty file"
        value="$(cat "$file")"
    else
        value="$(random_password "$DEFAULT_LENGTH")"
    fi
    store "${PW_PREFIX}1" "$value" "${PROJECT}.env=${ENVIRONMENT}"
    store "$BOOTSTRAP" "$value" "${PROJECT}.env=${ENVIRONMENT}"
}

# The script of the one-off task (sh in Postgres's image): authenticates with the first secret of $AUTH that works, turns
# off statement logging for its session (the password is in one statement; psql reads it from
# the secret file itself, so it is in no argument or environment), sets the connected role's
# (:USER) password, and proves the new password by logging in with it.
ALTER_SCRIPT="$(cat <<'SH'
set -eu
for f in $AUTH; do
  if PGPASSWORD="$(cat "/run/secrets/$f")" psql -Atqc "SELECT 1" >/dev/null 2>&1; then
    PGPASSWORD="$(cat "/run/secrets/$f")" psql -v ON_ERROR_STOP=1 -q <<"SQL"
SET log_statement = none;
SET log_min_error_statement = panic;
SET log_min_duration_statement = -1;
\set newpw `cat /run/secrets/new`
ALTER ROLE :"USER" PASSWORD :'newpw';
SQL
    PGPASSWORD="$(cat /run/secrets/new)" psql -Atqc "SELECT 1" >/dev/null
    echo "password changed (authenticated with $f)"
    exit 0
  fi
done
echo "none of the given secrets ($AUTH) is the current password of the database role" >&2
exit 1
SH
)"

# alter_password WHAT NEW AUTH_SECRET...: the role's password becomes the content of secret NEW,
# set from a one-off task on the stack's data network (any node, like Postgres itself),
# authenticating with the first AUTH_SECRET that works.
alter_password() {
    local what="$1" new="$2" spec args=() targets=() i=0 user
    shift 2
    for spec in "$@"; do
        args+=(--secret "${spec}:auth${i}")
        targets+=("auth${i}")
        i=$((i + 1))
    done
    user="$(ops_service_env postgres POSTGRES_USER postgres)"
    log "${what}"
    local rc=0
    ops_helper password --entrypoint sh --timeout 120 --secret "${new}:new" "${args[@]}" \
        --env PGHOST=postgres --env "PGUSER=${user}" \
        --env "PGDATABASE=$(ops_service_env postgres POSTGRES_DB "$user")" --env "AUTH=${targets[*]}" \
        -- -c "$ALTER_SCRIPT" || rc=$?
    # It mounts the old secret: gone now, so that secret can be removed after the rollout.
    ops_helper_rm "$OPS_HELPER"
    return "$rc"
}

cmd_rotate() {
    local what="${1:-}" env="${2:-}" current current_n next_n new value old rc=0
    [[ "$what" == db-password ]] || die "rotate: only 'db-password' can be rotated (got '${what}')"
    [[ $# -eq 2 ]] || die "usage: secret.sh rotate db-password ENV"
    env_names "$env"
    ops_env "$env"
    [[ -x "${OPS_ENV_DIR}/current/stackship" ]] || die "${OPS_ENV_DIR}/current/stackship is missing: ${ENVIRONMENT} has never been copied to this manager"
    # One deploy of this environment at a time: the rotation holds the deploy lock throughout
    # and hands it to stackship deploy.
    ops_lock
    current="$(ops_service_secret backend db_password)"
    [[ "$current" == "$PW_PREFIX"* ]] || die "the ${ENVIRONMENT} backend mounts ${current}, not a ${PW_PREFIX}<N>: deploy ${ENVIRONMENT} first"
    [[ "$(docker service inspect "${STACK}_backend" --format '{{.UpdateStatus.State}}')" != rollback_* ]] \
        || die "the ${ENVIRONMENT} backend's last update was rolled back: deploy a working release before rotating"
    exists "$BOOTSTRAP" || die "${BOOTSTRAP} is missing (secret.sh init db-password ${ENVIRONMENT})"
    current_n="${current#"$PW_PREFIX"}"
    next_n="$(versions | tail -n 1)"
    next_n=$((next_n + 1))
    new="${PW_PREFIX}${next_n}"
    log "rotating ${ENVIRONMENT}'s database password: ${current} -> ${new}"
    value="$(random_password "$DEFAULT_LENGTH")"
    store "$new" "$value" "${PROJECT}.env=${ENVIRONMENT}"
    value=""
    # The bootstrap password is tried second: after Postgres initialised a new data directory
    # (a lost volume), the role has that one, and a rotation brings the backend back.
    alter_password "ALTER ROLE: the password of ${new}" "$new" "$current" "$BOOTSTRAP" \
        || { docker secret rm "$new" >/dev/null 2>&1 || true; die "the password was not changed; ${new} removed, the backend keeps ${current}"; }

    log "deploying ${ENVIRONMENT} with ${new} (the backend rolls; Postgres keeps running)"
    DB_PASSWORD_SECRET="$new" STACKSHIP_DEPLOY_LOCK_FD=9 "${OPS_ENV_DIR}/current/stackship" deploy "${ENVIRONMENT}" \
        --release "${OPS_ENV_DIR}/current" || rc=$?
    if ((rc != 0)); then
        log "the rollout onto ${new} FAILED (exit ${rc}): putting the old password back"
        alter_password "ALTER ROLE: the password of ${current} again" "$current" "$new" \
            || die "ROTATION FAILED AND THE OLD PASSWORD COULD NOT BE RESTORED: the role has the password of ${new} while the backend mounts ${current}; run secret.sh rotate db-password ${ENVIRONMENT} again once the cause is fixed"
        docker secret rm "$new" >/dev/null 2>&1 || warn "could not remove ${new}"
        die "rotation failed: the rollout onto ${new} did not complete; the role's password and the backend are back on ${current}"
    fi
    # The old tasks may still be stopping (their stop_grace_period): Swarm refuses the removal
    # until they are gone, so it is retried for a minute.
    local deadline=$((SECONDS + 60)) err
    for old in $(versions); do
        ((old < next_n)) || continue
        until err="$(docker secret rm "${PW_PREFIX}${old}" 2>&1 >/dev/null)"; do
            if ((SECONDS >= deadline)); then
                warn "${PW_PREFIX}${old} was left in place: ${err}"
                continue 2
            fi
            sleep 2
        done
        log "removed ${PW_PREFIX}${old}"
    done
    log "${ENVIRONMENT}'s database password is ${new} (was v${current_n})"
}

cmd_list() {
    local filter=(--filter "label=${PROJECT}.managed-by")
    if [[ -n "${1:-}" ]]; then
        env_names "$1"
        filter=(--filter "name=${STACK}-")
    fi
    docker secret ls "${filter[@]}" --format '{{.Name}}\t{{.CreatedAt}}' | sort
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        -h | --help | help) usage; return 0 ;;
        "") usage >&2; die "missing command" ;;
    esac
    shift
    need docker "install the Docker engine"
    [[ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" == "true" ]] \
        || die "this engine is not a swarm manager (secrets live in the swarm)"
    case "$cmd" in
        create) cmd_create "$@" ;;
        init) cmd_init "$@" ;;
        rotate) cmd_rotate "$@" ;;
        list) cmd_list "$@" ;;
        *) usage >&2; die "unknown command '${cmd}'" ;;
    esac
}

main "$@"
