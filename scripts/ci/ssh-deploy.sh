#!/usr/bin/env bash
# The dev-deploy / prod-deploy job: ships one environment's release to the Swarm manager over
# SSH and deploys it there.
#   1. stages the release locally with scripts/ci/copy-manifests.sh (stackship, the tool
#      binaries from the build job, the stack file, deploy-manifests/<env>/ with its pins);
#   2. checks the connection: the host key must be in $SSH_KNOWN_HOSTS (StrictHostKeyChecking
#      yes, no other known_hosts file, never ssh-keyscan), the key from $SSH_PRIVATE_KEY; a
#      wrong host key stops here, before anything is copied;
#   3. rsyncs the release into <env dir>/.incoming-<job>/ on the manager;
#   4. runs remote-deploy.sh there, which runs the release's own `stackship deploy --from`:
#      under the environment's deploy lock it checks the commit is not older than the one
#      running, swaps the release in and deploys it; the registry login (a deploy token), the
#      commit and its ancestors (git rev-list) go over stdin;
#   5. keeps the rollout report in rollout/ (artifact), prints its summary and, in an MR,
#      posts it as a note.
# Exits with the rollout's result: a rolled-back or failed rollout fails the job.
#
# `review` (review-deploy) does the same for the MR's review stack stackship-review-<iid>: the
# dev release plus docker-compose.review.yaml into <root>/review/<iid>/, stackship deploy --review, and
# the stack's URL in the dotenv report review.env (REVIEW_URL, the GitLab environment's URL).
# `review-stop` (review-stop) uploads the build job's stackship binary alone and runs
# `stackship review stop IID` with it: the stack and everything it made are removed; nothing left
# to remove is a success.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/ssh-deploy.sh dev|prod|review|review-stop

CI variables:
  SERVER_HOST, SERVER_USER         the manager and the deploy user (scripts/server/setup-server.sh)
  SERVER_PORT                      ssh port (default 22)
  SSH_PRIVATE_KEY                  File variable: the CI private key
  SSH_KNOWN_HOSTS                  File variable: the manager's host key line(s), as
                                   setup-server.sh prints them
  DEPLOY_REGISTRY_USER,            a deploy token with read_registry: the manager pulls with it
  DEPLOY_REGISTRY_PASSWORD         (not the job token, which expires with the job)
  CI_REGISTRY_IMAGE                <registry>/<group>/stackship; DEPLOY_REGISTRY overrides the
                                   registry part (<registry>/<group>)
  BUILT_BACKEND_TAG, BUILT_FRONTEND_TAG
                                   dev and review: images this pipeline built, over the dev pins
  CI_MERGE_REQUEST_IID             review, review-stop: the MR whose stack it is
  ALLOW_OLDER                      1: deploy even a commit older than the one running (an
                                   ancestor of it; set it on a manual run of the job)
  REVIEW_PORT_BASE                 review: the stack's host port is this + the MR iid
                                   (default 20000)
  STACKSHIP_REMOTE_DEPLOY_ROOT     deploy root on the manager (default /data/stackship/deploy)
  TLS_CERT_FILE, TLS_KEY_FILE      optional File variables: the site's certificate (chain) and
                                   key, installed as <env dir>/secrets/tls.crt and tls.key (0600)
                                   before the deploy; prod names its TLS secrets after their
                                   content, so a renewed certificate rolls exactly the proxy
  MR_NOTE_TOKEN                    optional: post the rollout summary on the MR
Binaries: .build/tools/{config-hasher,rollout-watcher,stackship}, statically linked (build-lint-test,
scripts/ci/build-tools.sh); STACKSHIP_TOOLS_DIR overrides the directory.
USAGE
}

ENV=""
TMP=""
SSH_OPTS=()
TARGET=""
ENV_DIR=""

cleanup() { [[ -z "$TMP" ]] || rm -rf "$TMP"; }

check_settings() {
    [[ -n "${SERVER_HOST:-}" ]] || die "SERVER_HOST is not set"
    [[ "$SERVER_HOST" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ || "$SERVER_HOST" =~ ^[0-9a-fA-F:]+$ ]] \
        || die "SERVER_HOST '${SERVER_HOST}' is not a host name or address"
    [[ "${SERVER_USER:-}" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "SERVER_USER '${SERVER_USER:-}' is not a user name"
    SERVER_PORT="${SERVER_PORT:-22}"
    [[ "$SERVER_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || die "SERVER_PORT '${SERVER_PORT}' is not a port"
    [[ -n "${SSH_PRIVATE_KEY:-}" && -f "$SSH_PRIVATE_KEY" ]] \
        || die "SSH_PRIVATE_KEY must be a File variable (a path to the private key)"
    [[ -n "${SSH_KNOWN_HOSTS:-}" && -s "$SSH_KNOWN_HOSTS" ]] \
        || die "SSH_KNOWN_HOSTS must be a File variable with the manager's host key (scripts/server/setup-server.sh prints it); host keys are never fetched on first use"
    REMOTE_ROOT="${STACKSHIP_REMOTE_DEPLOY_ROOT:-/data/${STACKSHIP_PROJECT}/deploy}"
    [[ "$REMOTE_ROOT" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "STACKSHIP_REMOTE_DEPLOY_ROOT '${REMOTE_ROOT}' is not a plain absolute path"
    if [[ -n "${DEPLOY_REGISTRY:-}" ]]; then
        REGISTRY="$DEPLOY_REGISTRY"
    else
        [[ "${CI_REGISTRY_IMAGE:-}" == */"${STACKSHIP_PROJECT}" ]] \
            || die "CI_REGISTRY_IMAGE '${CI_REGISTRY_IMAGE:-}' does not end in /${STACKSHIP_PROJECT} (set DEPLOY_REGISTRY to the registry part of the images)"
        REGISTRY="${CI_REGISTRY_IMAGE%/"${STACKSHIP_PROJECT}"}"
    fi
    if [[ -n "${DEPLOY_REGISTRY_USER:-}" && -z "${DEPLOY_REGISTRY_PASSWORD:-}" ]] \
        || [[ -z "${DEPLOY_REGISTRY_USER:-}" && -n "${DEPLOY_REGISTRY_PASSWORD:-}" ]]; then
        die "set both DEPLOY_REGISTRY_USER and DEPLOY_REGISTRY_PASSWORD (a deploy token with read_registry), or neither"
    fi
    [[ -n "${DEPLOY_REGISTRY_USER:-}" ]] \
        || warn "no DEPLOY_REGISTRY_USER: the manager pulls with the login it already has"
    ENV_DIR="${REMOTE_ROOT%/}/${ENV}"
    if [[ "$ENV" == review* ]]; then
        [[ "${CI_MERGE_REQUEST_IID:-}" =~ ^[1-9][0-9]{0,8}$ ]] \
            || die "CI_MERGE_REQUEST_IID '${CI_MERGE_REQUEST_IID:-}' is not a merge request IID: review stacks exist only in MR pipelines"
        REVIEW_PORT_BASE="${REVIEW_PORT_BASE:-20000}"
        [[ "$REVIEW_PORT_BASE" =~ ^[1-9][0-9]{0,4}$ ]] || die "REVIEW_PORT_BASE '${REVIEW_PORT_BASE}' is not a port number"
        ENV_DIR="${REMOTE_ROOT%/}/review/${CI_MERGE_REQUEST_IID}"
    fi
    TARGET="${SERVER_USER}@${SERVER_HOST}"
}

# check_tls: TLS_CERT_FILE and TLS_KEY_FILE come together, as a PEM certificate that has not
# expired and the private key of that certificate; checked before anything is copied.
check_tls() {
    [[ -n "${TLS_CERT_FILE:-}" || -n "${TLS_KEY_FILE:-}" ]] || return 0
    [[ -n "${TLS_CERT_FILE:-}" && -s "$TLS_CERT_FILE" && -n "${TLS_KEY_FILE:-}" && -s "$TLS_KEY_FILE" ]] \
        || die "TLS_CERT_FILE and TLS_KEY_FILE must both be File variables with content (the certificate and its key), or neither be set"
    need_cmd openssl openssl
    openssl x509 -in "$TLS_CERT_FILE" -noout 2>/dev/null || die "TLS_CERT_FILE is not a PEM certificate"
    openssl x509 -in "$TLS_CERT_FILE" -noout -checkend 0 >/dev/null 2>&1 \
        || die "the certificate in TLS_CERT_FILE has expired ($(openssl x509 -in "$TLS_CERT_FILE" -noout -enddate))"
    [[ "$(openssl x509 -in "$TLS_CERT_FILE" -noout -pubkey 2>/dev/null)" == "$(openssl pkey -in "$TLS_KEY_FILE" -pubout 2>/dev/null)" ]] \
        || die "TLS_KEY_FILE is not the private key of the certificate in TLS_CERT_FILE"
    log "TLS certificate: $(openssl x509 -in "$TLS_CERT_FILE" -noout -subject), $(openssl x509 -in "$TLS_CERT_FILE" -noout -enddate)"
}

# ssh_setup: the key in a private copy, and options that trust exactly $SSH_KNOWN_HOSTS.
ssh_setup() {
    need_cmd ssh openssh-client
    need_cmd rsync rsync
    need_cmd jq jq
    need_cmd curl curl
    # The commit's ancestors go with the release (the manager refuses an older commit).
    need_cmd git git
    # The MR note goes to the GitLab API over HTTPS (curl alone does not pull the CA bundle in).
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] || apt_install ca-certificates
    (umask 077 && cat "$SSH_PRIVATE_KEY" > "$TMP/key")
    # GitLab File variables lose a key's final newline when it was pasted without one.
    [[ "$(tail -c 1 "$TMP/key" | od -An -c | tr -d ' ')" == '\n' ]] || printf '\n' >> "$TMP/key"
    cp "$SSH_KNOWN_HOSTS" "$TMP/known_hosts"
    SSH_OPTS=(-F /dev/null -p "$SERVER_PORT"
        -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no
        -o "UserKnownHostsFile=$TMP/known_hosts" -o GlobalKnownHostsFile=/dev/null
        -o IdentitiesOnly=yes -o "IdentityFile=$TMP/key" -o IdentityAgent=none
        -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
        -o ConnectTimeout=20 -o ServerAliveInterval=30 -o ServerAliveCountMax=4 -o LogLevel=ERROR)
}

# remote CMD: CMD runs in the deploy user's shell on the manager (built from validated paths).
# shellcheck disable=SC2029 # expanded here on purpose
remote() { ssh "${SSH_OPTS[@]}" "$TARGET" "$@"; }

stage_release() {
    local root bin_dir
    root="$(repo_root)"
    bin_dir="$(tools_dir)"
    log "staging the ${ENV} release (binaries from ${bin_dir})"
    # A review stack is dev's release with its own stack file.
    "$root/scripts/ci/copy-manifests.sh" "--${ENV/review/dev}" --dest "$TMP/stage" --bin-dir "$bin_dir" \
        || die "staging the ${ENV} release failed (did build-lint-test run in this pipeline?)"
    mkdir -p "$TMP/upload"
    mv "$TMP/stage/current" "$TMP/upload/current"
    if [[ "$ENV" == review ]]; then
        install -m 0644 "$root/docker-compose.review.yaml" "$TMP/upload/current/"
    fi
    install -m 0755 "$root/scripts/ci/remote-deploy.sh" "$TMP/upload/remote-deploy.sh"
    if [[ -n "${TLS_CERT_FILE:-}" ]]; then
        install -d -m 0700 "$TMP/upload/secrets"
        install -m 0600 "$TLS_CERT_FILE" "$TMP/upload/secrets/tls.crt"
        install -m 0600 "$TLS_KEY_FILE" "$TMP/upload/secrets/tls.key"
    fi
}

# commit_ancestors: up to MAX_ANCESTORS ancestors of CI_COMMIT_SHA, newest first, from this
# checkout (GIT_DEPTH in .gitlab-ci.yml says how far back a job's clone reaches), in ANCESTORS.
MAX_ANCESTORS=300
commit_ancestors() {
    ANCESTORS=""
    [[ -n "${CI_COMMIT_SHA:-}" ]] || return 0
    local root err="$TMP/rev-list.err"
    root="$(repo_root)"
    # The checkout may belong to another user than the job's (a runner's volume).
    if ! ANCESTORS="$(git -c safe.directory="$root" -C "$root" rev-list --max-count="$((MAX_ANCESTORS + 1))" "${CI_COMMIT_SHA}" -- 2>"$err" \
        | tail -n +2 | paste -sd' ')"; then
        ANCESTORS=""
    fi
    if [[ -z "$ANCESTORS" ]]; then
        warn "no history of ${CI_COMMIT_SHA:0:8} in this checkout ($(head -n 1 "$err" || true)): the manager refuses it as older only if a later deploy recorded it as an ancestor"
    else
        log "commit ${CI_COMMIT_SHA:0:8} and $(wc -w <<<"$ANCESTORS") of its ancestors go with the release (the manager refuses an older commit than the one running)"
    fi
}

# settings: what remote-deploy.sh reads on stdin.
settings() {
    printf 'REGISTRY=%s\n' "$REGISTRY"
    printf 'REGISTRY_USER=%s\nREGISTRY_PASSWORD=%s\n' "${DEPLOY_REGISTRY_USER:-}" "${DEPLOY_REGISTRY_PASSWORD:-}"
    printf 'CI_JOB_URL=%s\n' "${CI_JOB_URL:-}"
    # The deploy record names the commit and pipeline the release came from, and the commit's
    # ancestors: the manager refuses a commit older than the one running (ALLOW_OLDER=1 lets
    # it through).
    printf 'CI_COMMIT_SHA=%s\nCI_PIPELINE_URL=%s\n' "${CI_COMMIT_SHA:-}" "${CI_PIPELINE_URL:-}"
    printf 'COMMIT_ANCESTORS=%s\n' "$ANCESTORS"
    printf 'ALLOW_OLDER=%s\n' "${ALLOW_OLDER:-}"
    if [[ "$ENV" == dev || "$ENV" == review ]]; then
        # Images this pipeline built win over the dev pins; prod deploys its pins only.
        printf 'BACKEND_TAG=%s\nFRONTEND_TAG=%s\n' "${BUILT_BACKEND_TAG:-}" "${BUILT_FRONTEND_TAG:-}"
    fi
    [[ "$ENV" != review ]] || printf 'REVIEW_PORT_BASE=%s\n' "$REVIEW_PORT_BASE"
}

# review_stop: the build job's stackship, uploaded alone (the stack's own release may be gone),
# runs `stackship review stop IID` on the manager: the stack and everything it made are removed.
# The binary is checked before anything else (check_stop_binary).
STOP_BIN=""
check_stop_binary() {
    STOP_BIN="$(tools_dir)/stackship"
    [[ -x "$STOP_BIN" ]] || die "the stackship binary '${STOP_BIN}' is missing (did build-lint-test run in this pipeline?)"
}

review_stop() {
    local parent="${REMOTE_ROOT%/}/review" upload rc=0
    remote "test -d '${parent}' && test -w '${parent}'" \
        || die "cannot use ${TARGET}:${parent}: the host key does not match SSH_KNOWN_HOSTS, the key was refused, or the directory is missing or not writable (scripts/server/setup-server.sh)"
    upload="${parent}/.stop-${CI_MERGE_REQUEST_IID}-${CI_JOB_ID:-local}-$$"
    upload="${upload//[^0-9A-Za-z\/._-]/}"
    mkdir -p "$TMP/upload"
    install -m 0755 "$STOP_BIN" "$TMP/upload/stackship"
    rsync -a -e "$(printf '%q ' ssh "${SSH_OPTS[@]}")" "$TMP/upload/" "${TARGET}:${upload}/" \
        || { remote "rm -rf '${upload}'" || true; die "copying stackship to ${TARGET} failed"; }
    log "removing the review stack of MR !${CI_MERGE_REQUEST_IID} on ${TARGET}"
    remote "'${upload}/stackship' --root '${REMOTE_ROOT}' review stop '${CI_MERGE_REQUEST_IID}'" </dev/null || rc=$?
    remote "rm -rf '${upload}'" || warn "could not remove ${upload} on ${TARGET}"
    local meaning=""
    case "$rc" in
        0) ;;
        2) meaning="nothing was removed" ;;
        3) meaning="part of the stack is left: stackship names it above" ;;
        *) meaning="the connection to the manager failed or stackship could not run there" ;;
    esac
    [[ "$rc" -eq 0 ]] || die "removing the review stack FAILED (exit ${rc}: ${meaning}); see above"
    log "review stack of MR !${CI_MERGE_REQUEST_IID} removed"
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        dev | prod | review | review-stop) ENV="$1" ;;
        *) usage >&2; die "expected dev, prod, review or review-stop" ;;
    esac
    [[ $# -eq 1 ]] || { usage >&2; die "expected exactly one environment"; }
    check_settings
    check_tls
    [[ "$ENV" != review-stop ]] || check_stop_binary
    TMP="$(mktemp -d)"
    trap cleanup EXIT
    ssh_setup
    if [[ "$ENV" == review-stop ]]; then
        review_stop
        return 0
    fi
    stage_release
    commit_ancestors

    log "connecting to ${TARGET} port ${SERVER_PORT} (host key pinned by SSH_KNOWN_HOSTS)"
    [[ "$ENV" != review ]] || remote "test -d '${ENV_DIR%/*}' && test -w '${ENV_DIR%/*}' && mkdir -p '${ENV_DIR}'" \
        || die "cannot use ${TARGET}:${ENV_DIR%/*}: the host key does not match SSH_KNOWN_HOSTS, the key was refused, or the directory is missing or not writable (scripts/server/setup-server.sh); nothing was copied"
    remote "test -d '${ENV_DIR}' && test -w '${ENV_DIR}'" \
        || die "cannot use ${TARGET}:${ENV_DIR}: the host key does not match SSH_KNOWN_HOSTS, the key was refused, or the directory is missing or not writable (scripts/server/setup-server.sh); nothing was copied"

    local incoming rc=0 job="${CI_JOB_ID:-local}"
    incoming="${ENV_DIR}/.incoming-${job//[^0-9A-Za-z]/}-$(date -u +%Y%m%d%H%M%S)-$$"
    log "copying the release to ${TARGET}:${incoming}/"
    rsync -a --delete -e "$(printf '%q ' ssh "${SSH_OPTS[@]}")" "$TMP/upload/" "${TARGET}:${incoming}/" \
        || { remote "rm -rf '${incoming}'" || true; die "copying the release to ${TARGET} failed"; }

    mkdir -p rollout
    rm -f rollout/last-rollout.json
    log "deploying ${ENV} on ${TARGET}"
    local remote_args="--${ENV}"
    if [[ "$ENV" == review ]]; then
        remote_args="--review ${CI_MERGE_REQUEST_IID}"
        # The GitLab environment's URL (dotenv report), written even when the deploy fails.
        printf 'REVIEW_URL=http://%s:%s\n' "$SERVER_HOST" "$((REVIEW_PORT_BASE + CI_MERGE_REQUEST_IID))" > review.env
    fi
    settings | remote "'${incoming}/remote-deploy.sh' ${remote_args}" > rollout/last-rollout.json || rc=$?

    "$(repo_root)/scripts/ci/rollout-note.sh" "$ENV" rollout/last-rollout.json > rollout/summary.md \
        || warn "cannot summarise the rollout report"
    # stackship deploy's exit status says what state the environment is in.
    local meaning=""
    case "$rc" in
        0) ;;
        1) meaning="the release failed and was rolled back: the old version serves" ;;
        2) meaning="nothing was deployed (refused, bad input, lock timeout or a Docker error before the deploy)" ;;
        3) meaning="the state is UNKNOWN: the rollout may still be moving; check with stackship status" ;;
        # ssh's own failure (255, a dropped connection): the deploy on the manager may go on.
        *) meaning="the state is UNKNOWN: the connection to the manager failed or the deploy could not run there (exit ${rc}); check with stackship status" ;;
    esac
    [[ -z "$meaning" ]] || printf '\n**Exit %s:** %s.\n' "$rc" "$meaning" >> rollout/summary.md
    printf '%s\n' "----- ${ENV} rollout -----" >&2
    cat rollout/summary.md >&2
    if [[ -n "${CI_MERGE_REQUEST_IID:-}" ]]; then
        "$(repo_root)/scripts/ci/mr-note.sh" rollout/summary.md || warn "the rollout summary could not be posted on the MR"
    fi
    [[ "$rc" -eq 0 ]] || die "the ${ENV} deploy FAILED (exit ${rc}: ${meaning}); see the rollout above and rollout/last-rollout.json"
    log "${ENV} deployed"
    [[ "$ENV" != review ]] || log "review stack of MR !${CI_MERGE_REQUEST_IID}: $(cut -d= -f2- review.env)"
}

main "$@"
