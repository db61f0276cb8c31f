#!/usr/bin/env bash
# Runs on the manager, started over SSH by scripts/ci/ssh-deploy.sh from the upload directory
# <env dir>/.incoming-<id>/ it sits in, beside the release it swaps in (./current/):
#   1. reads the deploy's settings as KEY=VALUE lines on stdin (so the registry password is
#      never on a command line), then closes stdin;
#   2. takes the environment's deploy lock (flock on <env dir>/deploy.lock, as deploy.sh and
#      the copy step do), waiting at most LOCK_WAIT seconds;
#   3. installs the uploaded TLS certificate and key, if any, as <env dir>/secrets/tls.crt and
#      tls.key (0600, each replaced atomically), and swaps the uploaded release in as
#      <env dir>/current;
#   4. runs current/deploy.sh under that same lock (STACKSHIP_DEPLOY_LOCK_FD), its output on
#      stderr, and then writes <env dir>/last-rollout.json to stdout;
# and exits with deploy.sh's status.
set -Eeuo pipefail

SCRIPT_NAME="remote-deploy"
# Settings the CI job may send; anything else on stdin is an error.
KEYS=(REGISTRY REGISTRY_USER REGISTRY_PASSWORD BACKEND_TAG FRONTEND_TAG LOCK_WAIT ROLLOUT_TIMEOUT CI_JOB_URL
    CI_COMMIT_SHA CI_PIPELINE_URL REVIEW_PORT_BASE)

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; exit 1; }

usage() {
    cat <<'USAGE'
Usage: <env dir>/.incoming-<id>/remote-deploy.sh --dev|--prod|--review IID < settings

Swaps ./current in as the environment's release under its deploy lock and runs deploy.sh
(--review IID: the env dir is <root>/review/IID and deploy.sh deploys the review stack).
stdin: KEY=VALUE lines (REGISTRY, REGISTRY_USER, REGISTRY_PASSWORD, BACKEND_TAG, FRONTEND_TAG,
LOCK_WAIT, ROLLOUT_TIMEOUT, CI_JOB_URL, CI_COMMIT_SHA, CI_PIPELINE_URL, REVIEW_PORT_BASE). stdout: last-rollout.json. Exit status: deploy.sh's.
USAGE
}

read_settings() {
    local line key value k ok
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "$line" ]] && continue
        [[ "$line" == *=* ]] || die "setting line is not KEY=VALUE"
        key="${line%%=*}"
        value="${line#*=}"
        ok=""
        for k in "${KEYS[@]}"; do [[ "$k" == "$key" ]] && ok=1; done
        [[ -n "$ok" ]] || die "unknown setting '${key}' (allowed: ${KEYS[*]})"
        [[ -z "$value" ]] || export "$key=$value"
    done
}

# install_secret_files UPLOAD ENV_DIR: the secret source files the job uploaded (tls.crt and
# tls.key, nothing else) replace those in ENV_DIR/secrets/.
install_secret_files() {
    local upload="$1/secrets" dir="$2/secrets" f
    [[ -d "$upload" ]] || return 0
    for f in "$upload"/* "$upload"/.[!.]*; do
        [[ -e "$f" ]] || continue
        [[ "$(basename "$f")" == tls.crt || "$(basename "$f")" == tls.key ]] \
            || die "unexpected file '$(basename "$f")' in the uploaded secrets (only tls.crt and tls.key)"
    done
    [[ -s "$upload/tls.crt" && -s "$upload/tls.key" ]] || die "the upload has only one of tls.crt and tls.key"
    install -d -m 0700 "$dir"
    for f in tls.key tls.crt; do
        install -m 0600 "$upload/$f" "$dir/.$f.new"
        mv -f "$dir/.$f.new" "$dir/$f"
    done
    log "installed the TLS certificate and key from the pipeline in ${dir}"
}

main() {
    local env="" deploy_args=()
    case "${1:-}" in
        --dev | --prod) env="${1#--}"; deploy_args=("--${env}") ;;
        --review)
            [[ "${2:-}" =~ ^[1-9][0-9]{0,8}$ ]] || die "--review needs a merge request IID"
            env="dev"
            deploy_args=(--review "$2")
            ;;
        -h | --help) usage; return 0 ;;
        *) usage >&2; die "expected --dev or --prod" ;;
    esac
    local incoming env_dir lock rc=0
    incoming="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    env_dir="$(dirname "$incoming")"
    [[ "$(basename "$incoming")" == .incoming-* ]] || die "${incoming} is not an upload directory (.incoming-*)"
    [[ -x "$incoming/current/deploy.sh" ]] || die "${incoming}/current/deploy.sh is missing: the upload is incomplete"
    [[ -d "$incoming/current/deploy-manifests/$env" ]] || die "the upload is not a ${env} release"
    [[ "${deploy_args[0]}" != --review || -f "$incoming/current/docker-compose.review.yaml" ]] \
        || die "the upload is not a review release (no docker-compose.review.yaml)"
    read_settings
    exec </dev/null
    command -v flock >/dev/null 2>&1 || die "flock is required on the manager (apt-get install util-linux)"

    lock="$env_dir/deploy.lock"
    exec 9>>"$lock" || die "cannot open ${lock}"
    if ! flock -n 9; then
        log "a ${env} deploy is running ($(cat "$env_dir/deploy.lock.owner" 2>/dev/null || echo 'unknown holder')); waiting up to ${LOCK_WAIT:-900}s"
        flock -w "${LOCK_WAIT:-900}" 9 || die "the ${env} deploy lock is still held after ${LOCK_WAIT:-900}s"
    fi
    printf 'pid %s on %s (remote-deploy), started %s%s\n' "$$" "$(hostname)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "${CI_JOB_URL:+, job ${CI_JOB_URL}}" > "$env_dir/deploy.lock.owner"
    install_secret_files "$incoming" "$env_dir"
    rm -rf "$env_dir/current.old"
    if [[ -e "$env_dir/current" ]]; then
        mv "$env_dir/current" "$env_dir/current.old"
    fi
    mv "$incoming/current" "$env_dir/current"
    rm -rf "$env_dir/current.old"
    log "release swapped in: ${env_dir}/current"
    # Nothing of the upload is needed any more; this script keeps running from memory.
    rm -rf "$incoming"

    local started
    started="$(date +%s)"
    STACKSHIP_DEPLOY_LOCK_FD=9 "$env_dir/current/deploy.sh" "${deploy_args[@]}" >&2 || rc=$?
    # Only this deploy's report: a deploy that stopped before the rollout leaves an old one.
    if [[ -f "$env_dir/last-rollout.json" && "$(stat -c %Y "$env_dir/last-rollout.json")" -ge "$started" ]]; then
        cat "$env_dir/last-rollout.json"
    fi
    return "$rc"
}

main "$@"
