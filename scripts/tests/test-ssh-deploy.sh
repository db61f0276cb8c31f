#!/usr/bin/env bash
# End-to-end test of the deploy job: the job's own script (scripts/ci/ssh-deploy.sh dev, with
# the CI variables a GitLab job gets) against a real sshd on a loopback port, a deploy user
# made by scripts/server/setup-server.sh (key-only, exactly the CI key), the host key pinned through
# SSH_KNOWN_HOSTS, onto this machine's swarm (the dev stack):
#   - a wrong or missing host key fails the job before anything is copied;
#   - a good release deploys (the stack runs the pinned images) and the job passes;
#   - an image this pipeline "built" that crashes overrides the pin, the rollout is rolled
#     back, and the job fails with the watcher's reason;
#   - the dev-deploy job of .gitlab-ci.yml itself, run by gitlab-ci-local's shell executor in
#     an MR pipeline labelled dev-deploy, deploys;
#   - the database backup schedule setup-server.sh installs, once deploy.env names an off-site
#     restic repository (SFTP, to a second user of this machine through the same sshd): the
#     every-minute run dumps the database, copies the dump off-site and test-restores it, and
#     `stackship db check dev` passes; the repository password shows up nowhere else;
#   - its review-deploy job, in an MR labelled review-deploy, deploys the MR's review stack on
#     its own port with the image the pipeline built and reports the URL; review-stop removes
#     all of it, and a second review-stop succeeds.
# Needs the local stack's registry and images (runs scripts/up.sh --dev when they are
# missing). Holds /tmp/stackship-e2e.lock while it runs (set STACKSHIP_E2E_LOCK_HELD=1 when
# the caller holds it already). Prints PASS/FAIL per check and "N passed, M failed".
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/tests/harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
# shellcheck source=scripts/tests/pipeline-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/pipeline-tools.sh"

E2E_LOCK="/tmp/stackship-e2e.lock"
TEST_USER="stackship-e2e"
# The off-site backup store's SFTP-only user.
STORE_USER="${TEST_USER}-store"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/test-ssh-deploy.sh [--help]

Root, Debian. Installs openssh-server and rsync when missing; starts its own sshd on a free
loopback port (stopped at the end); creates and removes the users stackship-e2e and
stackship-e2e-store; starts cron when neither systemd nor a cron daemon runs here (stopped at
the end). About 3 to 6 minutes. Honours CARGO_TARGET_DIR for the static tool binaries it builds
(scripts/ci/build-tools.sh).
USAGE
}

ROOT="$(repo_root)"
WORK=""
SSHD_PID=""
CRON_PID=""
API_PID=""
PORT=""
ENV_DIR=""
GOOD_TAG=""
# The merge request whose review stack the test makes (host port 20000 + this).
REVIEW_IID=903

cleanup() {
    if [[ -n "$API_PID" ]]; then
        kill "$API_PID" 2>/dev/null || true
        wait "$API_PID" 2>/dev/null || true
    fi
    if [[ -n "$SSHD_PID" ]]; then
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
    fi
    if [[ -n "$CRON_PID" ]]; then
        kill "$CRON_PID" 2>/dev/null || true
        wait "$CRON_PID" 2>/dev/null || true
    fi
    remove_backup_schedule
    if id "$STORE_USER" >/dev/null 2>&1; then
        userdel -r "$STORE_USER" >/dev/null 2>&1 || warn "could not remove the user ${STORE_USER}"
    fi
    if id "$TEST_USER" >/dev/null 2>&1; then
        userdel -r "$TEST_USER" >/dev/null 2>&1 || warn "could not remove the user ${TEST_USER}"
    fi
    if [[ -n "$WORK" && -d "$WORK/srv/deploy/review" && -x "$WORK/tools/stackship" ]]; then
        # A review stack a failed test left behind.
        "$WORK/tools/stackship" --root "$WORK/srv/deploy" review stop "$REVIEW_IID" 2>/dev/null \
            || warn "could not remove the review stack ${REVIEW_IID}"
    fi
    [[ -z "$WORK" ]] || rm -rf "$WORK"
}

# remove_backup_schedule: the dev backup schedule (cron entry or systemd units) setup-server.sh
# installed for this run's deploy root; one that points elsewhere is not this run's and stays.
remove_backup_schedule() {
    local unit="${STACKSHIP_PROJECT}-db-backup-dev"
    [[ -n "$WORK" ]] || return 0
    if grep -qF "${WORK}/" "/etc/cron.d/${unit}" 2>/dev/null; then
        rm -f "/etc/cron.d/${unit}"
    fi
    if grep -qF "${WORK}/" "/etc/systemd/system/${unit}.service" 2>/dev/null; then
        systemctl disable --now "${unit}.timer" >/dev/null 2>&1 || true
        systemctl stop "${unit}.service" >/dev/null 2>&1 || true
        rm -f "/etc/systemd/system/${unit}.timer" "/etc/systemd/system/${unit}.service"
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ensure_stack: the registry, the images and the dev deploy settings of scripts/up.sh.
ensure_stack() {
    local env_file
    env_file="$(env_deploy_dir dev)/deploy.env"
    if [[ ! -f "$env_file" ]] || ! registry_up; then
        log "the local dev stack is not up: scripts/up.sh --dev"
        "$ROOT/scripts/up.sh" --dev >&2 || die "scripts/up.sh --dev failed"
    fi
    GOOD_TAG="$(sed -n 's/^IMAGE_TAG=//p' "$env_file")"
    POSTGRES_IMAGE="$(sed -n 's/^POSTGRES_IMAGE=//p' "$env_file")"
    NGINX_IMAGE="$(sed -n 's/^NGINX_IMAGE=//p' "$env_file")"
    HAPROXY_IMAGE="$(sed -n 's/^HAPROXY_IMAGE=//p' "$env_file")"
    [[ -n "$GOOD_TAG" && -n "$POSTGRES_IMAGE" && -n "$NGINX_IMAGE" && -n "$HAPROXY_IMAGE" ]] \
        || die "${env_file} lacks IMAGE_TAG, POSTGRES_IMAGE, NGINX_IMAGE or HAPROXY_IMAGE"
    registry_password | docker login --username "$STACKSHIP_REGISTRY_USER" --password-stdin \
        "$STACKSHIP_REGISTRY_ADDR" >/dev/null 2>&1 || die "docker login to the local registry failed"
}

# test_images: <good tag>-e2enext, the good backend under a new tag (a release that updates
# the stack), and <good tag>-e2ecrash, the good backend with a command that exits 1.
test_images() {
    local repo="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend"
    NEXT_TAG="${GOOD_TAG}-e2enext"
    CRASH_TAG="${GOOD_TAG}-e2ecrash"
    docker pull -q "${repo}:${GOOD_TAG}" >/dev/null || die "cannot pull ${repo}:${GOOD_TAG}"
    docker tag "${repo}:${GOOD_TAG}" "${repo}:${NEXT_TAG}"
    printf 'FROM %s\nCMD ["/bin/sh", "-c", "echo crashing on purpose >&2; exit 1"]\n' "${repo}:${GOOD_TAG}" \
        | docker build -q -t "${repo}:${CRASH_TAG}" - >/dev/null 2>"$WORK/build.err" \
        || die "cannot build the crashing image: $(cat "$WORK/build.err")"
    docker push -q "${repo}:${NEXT_TAG}" >/dev/null || die "cannot push ${repo}:${NEXT_TAG}"
    docker push -q "${repo}:${CRASH_TAG}" >/dev/null || die "cannot push ${repo}:${CRASH_TAG}"
}

# backend_report FIELD: a field of the backend's entry in the job's rollout report.
backend_report() {
    jq -r --arg f "$1" '.services[] | select(.service == "backend") | .[$f] // ""' \
        "$WORK/job/rollout/last-rollout.json" 2>/dev/null
}

# start_sshd: sshd on 127.0.0.1:$PORT, the port setup-server.sh wrote into the known_hosts line;
# it also serves the backup store: SFTP only, with a key, for $STORE_USER.
start_sshd() {
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    cat > "$WORK/sshd_config" <<CONF
Port ${PORT}
ListenAddress 127.0.0.1
HostKey ${WORK}/host_key
PidFile ${WORK}/sshd.pid
UsePAM no
StrictModes yes
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers ${TEST_USER} ${STORE_USER}
Subsystem sftp internal-sftp
LogLevel VERBOSE
Include ${WORK}/sshd.d/*.conf
Match User ${STORE_USER}
    ForceCommand internal-sftp
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    AuthenticationMethods publickey
    AllowTcpForwarding no
    X11Forwarding no
    PermitTTY no
CONF
    /usr/sbin/sshd -t -f "$WORK/sshd_config" || die "sshd rejects the test configuration"
    /usr/sbin/sshd -D -e -f "$WORK/sshd_config" >"$WORK/sshd.log" 2>&1 </dev/null &
    SSHD_PID=$!
    wait_until 10 "sshd on 127.0.0.1:${PORT}" bash -c "exec 3<>/dev/tcp/127.0.0.1/${PORT}"
}

# job [VAR=VALUE...]: the dev-deploy job's script with the job's CI variables; log in
# $WORK/job.log, exit status in JOB_RC; runs in $WORK/job (its artifacts land there).
job() {
    mkdir -p "$WORK/job"
    JOB_RC=0
    (cd "$WORK/job" && env SERVER_HOST=127.0.0.1 SERVER_PORT="$PORT" SERVER_USER="$TEST_USER" \
        SSH_PRIVATE_KEY="$WORK/ci_key" SSH_KNOWN_HOSTS="$WORK/known_hosts" \
        DEPLOY_REGISTRY="$STACKSHIP_REGISTRY_ADDR" DEPLOY_REGISTRY_USER="$STACKSHIP_REGISTRY_USER" \
        DEPLOY_REGISTRY_PASSWORD="$(registry_password)" STACKSHIP_REMOTE_DEPLOY_ROOT="$WORK/srv/deploy" \
        CI_JOB_ID=4242 CI_JOB_URL=https://gitlab.invalid/group/stackship/-/jobs/4242 \
        CI_COMMIT_SHA=0123456789abcdef0123456789abcdef01234567 \
        CI_PIPELINE_URL=https://gitlab.invalid/group/stackship/-/pipelines/99 \
        STACKSHIP_TOOLS_DIR="$WORK/tools" "$@" \
        "$WORK/repo/scripts/ci/ssh-deploy.sh" dev) >"$WORK/job.log" 2>&1 || JOB_RC=$?
}

# gcl_job VAR=VALUE...: .gitlab-ci.yml's dev-deploy job (RUN_JOB; RUN_LABELS the MR's labels,
# default the job's name) in an MR pipeline labelled dev-deploy,
# run by gitlab-ci-local's shell executor in the checkout $WORK/repo with the CI variables
# from its project variables file (a value naming a file becomes a File variable there, as the
# key and known_hosts are in GitLab; directories go on the command line); log in
# $WORK/gcl.log, status in GCL_RC.
gcl_job() {
    local kv
    {
        printf 'SERVER_HOST: "127.0.0.1"\nSERVER_PORT: "%s"\nSERVER_USER: "%s"\n' "$PORT" "$TEST_USER"
        printf 'SSH_PRIVATE_KEY: "%s"\nSSH_KNOWN_HOSTS: "%s"\n' "$WORK/ci_key" "$WORK/known_hosts"
        printf 'DEPLOY_REGISTRY: "%s"\nDEPLOY_REGISTRY_USER: "%s"\n' "$STACKSHIP_REGISTRY_ADDR" "$STACKSHIP_REGISTRY_USER"
        printf 'DEPLOY_REGISTRY_PASSWORD: "%s"\n' "$(registry_password)"
        for kv in "$@"; do printf '%s: "%s"\n' "${kv%%=*}" "${kv#*=}"; done
    } > "$WORK/repo/.gitlab-ci-local-variables.yml"
    chmod 0600 "$WORK/repo/.gitlab-ci-local-variables.yml"
    GCL_RC=0
    local name="${RUN_JOB:-dev-deploy}"
    (cd "$WORK/repo" && GCL_IGNORE_PREDEFINED_VARS=CI_PIPELINE_SOURCE,CI_MERGE_REQUEST_LABELS,CI_MERGE_REQUEST_IID "$GCL" \
        --force-shell-executor --variable "STACKSHIP_REMOTE_DEPLOY_ROOT=$WORK/srv/deploy" \
        --variable "STACKSHIP_TOOLS_DIR=$WORK/tools" --variable CI_MERGE_REQUEST_IID="$REVIEW_IID" \
        --variable CI_PIPELINE_SOURCE=merge_request_event --variable "CI_MERGE_REQUEST_LABELS=${RUN_LABELS:-$name}" \
        "$name") >"$WORK/gcl.log" 2>&1 || GCL_RC=$?
}

service_image() {
    docker service inspect "$(stack_name dev)_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' 2>/dev/null \
        | sed 's/@sha256:.*//'
}

no_upload_left() { ! compgen -G "${ENV_DIR}/.incoming-*" >/dev/null; }

# build_static_image: the deploy tools alone in a FROM scratch image, stackship-e2e-static:test.
build_static_image() {
    docker build -q -t stackship-e2e-static:test "$WORK/tools" >/dev/null 2>"$WORK/build.err" \
        || fail "docker build failed: $(tail -n 3 "$WORK/build.err")"
}

run_tests() {
    local ssh_base=(ssh -F /dev/null -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=yes
        -o "UserKnownHostsFile=$WORK/known_hosts" -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes
        -o IdentityAgent=none -o ConnectTimeout=10)
    ENV_DIR="$WORK/srv/deploy/dev"

    # --- the deploy tools run in an image with nothing else in it ---
    local tool out
    printf 'FROM scratch\nCOPY config-hasher rollout-watcher stackship /\n' > "$WORK/tools/Dockerfile"
    docker image rm stackship-e2e-static:test >/dev/null 2>&1 || true
    check "static tools: the FROM scratch image builds" build_static_image
    if docker image inspect stackship-e2e-static:test >/dev/null 2>&1; then
        for tool in config-hasher rollout-watcher stackship; do
            out="$(docker run --rm stackship-e2e-static:test "/${tool}" --help 2>&1)" || out="failed: ${out}"
            expect_contains "static tools: ${tool} runs in an empty (FROM scratch) image" "Usage" <(printf '%s\n' "$out")
        done
        docker image rm stackship-e2e-static:test >/dev/null 2>&1 || true
    fi
    rm -f "$WORK/tools/Dockerfile"

    # --- the server as setup-server.sh left it ---
    expect_eq "setup: SSH_KNOWN_HOSTS line is [127.0.0.1]:PORT and the host key" \
        "[127.0.0.1]:${PORT} $(cut -d' ' -f1,2 "$WORK/host_key.pub")" "$(cat "$WORK/known_hosts")"
    local home
    home="$(getent passwd "$TEST_USER" | cut -d: -f6)"
    expect_eq "setup: authorized_keys holds exactly the CI key, restricted" \
        "restrict $(cut -d' ' -f1,2 "$WORK/ci_key.pub")" "$(cut -d' ' -f1-3 "$home/.ssh/authorized_keys")"
    expect_eq "setup: no password" '*' "$(getent shadow "$TEST_USER" | cut -d: -f2)"
    check "setup: in the docker group" bash -c "id -nG '$TEST_USER' | tr ' ' '\n' | grep -qx docker"
    expect_eq "setup: the deploy directory belongs to the deploy user" "$TEST_USER" "$(stat -c %U "$ENV_DIR")"
    local effective
    effective="$(/usr/sbin/sshd -T -f "$WORK/sshd_config" -C "user=${TEST_USER},host=ci,addr=127.0.0.1")"
    check "setup: sshd allows the deploy user public keys only" grep -qx 'authenticationmethods publickey' <<<"$effective"
    check "setup: sshd refuses passwords for the deploy user" grep -qx 'passwordauthentication no' <<<"$effective"
    check "setup: the CI key logs in" "${ssh_base[@]}" -i "$WORK/ci_key" "${TEST_USER}@127.0.0.1" true
    check "setup: another key is refused" refused "${ssh_base[@]}" -i "$WORK/other_key" "${TEST_USER}@127.0.0.1" true
    local again
    again="$("$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" 2>/dev/null)" || again="failed"
    expect_eq "setup: a second run changes nothing and prints the same line" "$(cat "$WORK/known_hosts")" "$again"

    # --- the daily certificate renewal: installed for an environment that sets ACME_DOMAINS ---
    local renew_cmd="$ENV_DIR/current/stackship cert renew dev" unit=stackship-cert-renew-dev had_env=0
    [[ -e "$ENV_DIR/deploy.env" ]] && had_env=1
    printf 'ACME_DOMAINS=shop.stackship.test\n' >> "$ENV_DIR/deploy.env"
    "$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" > /dev/null 2>&1 || true
    if [[ -d /run/systemd/system ]]; then
        check "renewal: a daily timer" grep -qx 'OnCalendar=daily' "/etc/systemd/system/${unit}.timer"
        check "renewal: ... running stackship cert renew dev as the deploy user" \
            bash -c "grep -qx 'ExecStart=${renew_cmd}' /etc/systemd/system/${unit}.service && grep -qx 'User=${TEST_USER}' /etc/systemd/system/${unit}.service"
    else
        check "renewal: a daily cron entry running stackship cert renew dev as the deploy user" \
            grep -q "^17 4 \* \* \* ${TEST_USER} ${renew_cmd} 2>&1 | logger -t ${unit}\$" "/etc/cron.d/${unit}"
    fi
    sed -i '/^ACME_DOMAINS=/d' "$ENV_DIR/deploy.env"
    ((had_env)) || rm -f "$ENV_DIR/deploy.env"
    "$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" > /dev/null 2>&1 || true
    check "renewal: removed when ACME_DOMAINS is unset" \
        bash -c "[[ ! -e /etc/cron.d/${unit} && ! -e /etc/systemd/system/${unit}.timer ]]"

    # --- a wrong host key: the job fails before anything is copied ---
    job SSH_KNOWN_HOSTS="$WORK/wrong_known_hosts"
    expect_eq "host key: a wrong host key fails the job" 1 "$JOB_RC"
    expect_contains "host key: ... saying nothing was copied" "nothing was copied" "$WORK/job.log"
    check "host key: ... and nothing was copied" bash -c "[[ ! -e '$ENV_DIR/current' ]] && ! compgen -G '$ENV_DIR/.incoming-*' >/dev/null"
    : > "$WORK/empty_known_hosts"
    job SSH_KNOWN_HOSTS="$WORK/empty_known_hosts"
    expect_eq "host key: an empty SSH_KNOWN_HOSTS fails the job (no trust on first use)" 1 "$JOB_RC"
    check "host key: ... and nothing was copied" test ! -e "$ENV_DIR/current"
    job SSH_KNOWN_HOSTS=
    expect_eq "host key: no SSH_KNOWN_HOSTS fails the job" 1 "$JOB_RC"

    # --- TLS File variables: a key of another certificate fails the job before it connects ---
    local tls
    for tls in site other; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=${tls}.test" -keyout "$WORK/${tls}.key" -out "$WORK/${tls}.crt" 2>/dev/null
    done
    job TLS_CERT_FILE="$WORK/site.crt" TLS_KEY_FILE="$WORK/other.key"
    expect_eq "tls: a key that does not match the certificate fails the job" 1 "$JOB_RC"
    expect_contains "tls: ... saying so" "is not the private key of the certificate" "$WORK/job.log"
    check "tls: ... and nothing was copied" bash -c "[[ ! -e '$ENV_DIR/current' && ! -e '$ENV_DIR/secrets/tls.crt' ]]"
    job TLS_CERT_FILE="$WORK/site.crt"
    expect_eq "tls: a certificate without its key fails the job" 1 "$JOB_RC"

    # --- a new release: the pins deploy, the stack updates, the job passes (and installs the
    # certificate and key it was given) ---
    local before
    before="$(service_image)"
    job TLS_CERT_FILE="$WORK/site.crt" TLS_KEY_FILE="$WORK/site.key"
    expect_eq "deploy: the job passes" 0 "$JOB_RC"
    check "tls: the job installed the certificate and key in the environment's secrets/" \
        bash -c "cmp -s '$WORK/site.crt' '$ENV_DIR/secrets/tls.crt' && cmp -s '$WORK/site.key' '$ENV_DIR/secrets/tls.key'"
    expect_eq "tls: ... readable by the deploy user only" "600 600 ${TEST_USER}" \
        "$(stat -c %a "$ENV_DIR/secrets/tls.crt" "$ENV_DIR/secrets/tls.key" 2>/dev/null | tr '\n' ' ')$(stat -c %U "$ENV_DIR/secrets/tls.key" 2>/dev/null)"
    [[ "$JOB_RC" -eq 0 ]] || tail -n 40 "$WORK/job.log" | sed 's/^/  | /'
    expect_eq "deploy: the stack runs the pinned backend" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${NEXT_TAG}" "$(service_image)"
    check "deploy: ... which it did not run before (the stack updated)" test "$before" != "$(service_image)"
    check "deploy: the report shows the update to the pinned tag" \
        bash -c "[[ '$(backend_report new_image)' == *':${NEXT_TAG}@'* && '$(backend_report result)' == ok ]]"
    expect_eq "deploy: the release is in place, owned by the deploy user" "$TEST_USER" \
        "$(stat -c %U "$ENV_DIR/current/stackship" 2>/dev/null)"
    check "deploy: the release carries the pins" grep -qx "BACKEND_TAG=${NEXT_TAG}" "$ENV_DIR/current/deploy-manifests/dev/images.env"
    check "deploy: no upload directory is left" no_upload_left
    expect_contains "deploy: stackship deploy --from took the environment's lock" \
        "holding the dev deploy lock" "$WORK/job.log"
    expect_contains "deploy: ... and swapped the upload in under it" "release installed: ${ENV_DIR}/current" "$WORK/job.log"
    expect_contains "deploy: the tags came from the pins (file and line)" "/current/deploy-manifests/dev/images.env:" "$WORK/job.log"
    expect_eq "deploy: the rollout report came back (artifact)" true "$(jq -r .ok "$WORK/job/rollout/last-rollout.json" 2>/dev/null)"
    expect_contains "deploy: the summary says ok" "**dev deploy: ok**" "$WORK/job/rollout/summary.md"
    check "deploy: a deploy record was written" bash -c "compgen -G '$ENV_DIR/history/*.json' >/dev/null"
    expect_contains "deploy: the record names the commit and pipeline it came from" \
        "0123456789abcdef0123456789abcdef01234567" <(cat "$ENV_DIR"/history/*.json 2>/dev/null)
    expect_contains "deploy: ... and stackship history shows it" "commit 0123456789ab (last deploy)" \
        <("$ENV_DIR/current/stackship" history dev --root "$WORK/srv/deploy" 2>&1)
    expect_absent "deploy: the registry password is not in the job log" "$(registry_password)" "$WORK/job.log"

    # --- scheduled, off-site, test-restored database backups of the stack just deployed ---
    backup_schedule_tests

    # --- a crashing image built "in this pipeline" of an MR: overrides the pin, the job
    # fails, and the rollout summary goes to the MR (a stand-in GitLab API on loopback) ---
    mkdir -p "$WORK/api"
    python3 "$ROOT/scripts/tests/fake-gitlab-api.py" "$WORK/api" </dev/null >"$WORK/api.log" 2>&1 &
    API_PID=$!
    wait_until 10 "the stand-in GitLab API" test -s "$WORK/api/port"
    local token="glpat-e2e-$$-SECRET"
    job BUILT_BACKEND_TAG="$CRASH_TAG" CI_MERGE_REQUEST_IID=7 CI_PROJECT_ID=42 MR_NOTE_TOKEN="$token" \
        CI_API_V4_URL="http://127.0.0.1:$(cat "$WORK/api/port")/api/v4"
    expect_eq "bad image: the job fails when the rollout fails" 1 "$JOB_RC"
    expect_contains "bad image: the built tag overrode the pin" "backend:${CRASH_TAG} (BACKEND_TAG from the environment)" "$WORK/job.log"
    expect_contains "bad image: the job log says what the exit means" "exit 1: the release failed and was rolled back" "$WORK/job.log"
    expect_eq "bad image: the report says backend failed" failed "$(backend_report result)"
    expect_contains "bad image: the summary says FAILED with old -> new tag" \
        "\`${NEXT_TAG}\` → \`${CRASH_TAG}\` | failed |" "$WORK/job/rollout/summary.md"
    expect_contains "bad image: ... and the reason" "rolled back" "$WORK/job/rollout/summary.md"
    expect_eq "bad image: Swarm is back on the last good image" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${NEXT_TAG}" "$(service_image)"
    expect_contains "bad image: the job log says the deploy failed" "the dev deploy FAILED" "$WORK/job.log"
    expect_eq "bad image: one MR note, on MR 7" "/api/v4/projects/42/merge_requests/7/notes" \
        "$(jq -r .path "$WORK/api/requests.jsonl" 2>/dev/null | paste -sd' ')"
    jq -r '.body | fromjson | .body' "$WORK/api/requests.jsonl" > "$WORK/note.md" 2>/dev/null || true
    expect_contains "bad image: the note is the rollout summary" \
        "\`${NEXT_TAG}\` → \`${CRASH_TAG}\` | failed |" "$WORK/note.md"
    expect_absent "bad image: the note token is not in the job log" "$token" "$WORK/job.log"

    # --- a revert of the pin: the stack returns to the tag scripts/up.sh deployed ---
    "$WORK/repo/scripts/pin-image.sh" dev backend "$GOOD_TAG" 2>/dev/null
    job
    expect_eq "revert: the job passes" 0 "$JOB_RC"
    expect_eq "revert: the stack runs the reverted pin" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${GOOD_TAG}" "$(service_image)"

    # --- .gitlab-ci.yml's own dev-deploy job through gitlab-ci-local, with the tag an image
    # job of the pipeline built (its dotenv report) over the pin ---
    gcl_job BUILT_BACKEND_TAG="$NEXT_TAG"
    expect_eq "gitlab-ci-local: the dev-deploy job passes" 0 "$GCL_RC"
    [[ "$GCL_RC" -eq 0 ]] || tail -n 30 "$WORK/gcl.log" | sed 's/^/  | /'
    expect_contains "gitlab-ci-local: it ran the job's script line" '$ scripts/ci/ssh-deploy.sh dev' "$WORK/gcl.log"
    expect_eq "gitlab-ci-local: the stack runs the image the pipeline built" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${NEXT_TAG}" "$(service_image)"
    expect_absent "gitlab-ci-local: the registry password is not in the job log" "$(registry_password)" "$WORK/gcl.log"

    # --- deploys do not go backwards: the job sends its commit's ancestors, and the manager
    # refuses a commit older than the one running ---
    git -C "$WORK/repo" -c user.name=test -c user.email=test@localhost commit -q --allow-empty -m next
    local first next records
    first="$(git -C "$WORK/repo" rev-parse HEAD~1)"
    next="$(git -C "$WORK/repo" rev-parse HEAD)"
    job CI_COMMIT_SHA="$next"
    expect_eq "ancestry: a newer commit deploys" 0 "$JOB_RC"
    expect_contains "ancestry: ... with its history" "commit ${next:0:8} and 1 of its ancestors go with the release" "$WORK/job.log"
    expect_contains "ancestry: ... which the manager compared" "commit ${next:0:8} descends from the running ${first:0:8}" "$WORK/job.log"
    records="$(find "$ENV_DIR/history" -name '*.json' | wc -l)"
    job CI_COMMIT_SHA="$first"
    expect_eq "ancestry: an older commit fails the job" 1 "$JOB_RC"
    expect_contains "ancestry: ... saying why" "commit ${first:0:8} is older than the running ${next:0:8}" "$WORK/job.log"
    expect_contains "ancestry: ... and that nothing was deployed" "exit 2: nothing was deployed" "$WORK/job.log"
    expect_eq "ancestry: ... no deploy was recorded" "$records" "$(find "$ENV_DIR/history" -name '*.json' | wc -l)"
    check "ancestry: ... and no upload is left" no_upload_left

    job
    expect_eq "restore: the stack is back on the tag scripts/up.sh deployed" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${GOOD_TAG}" "$(service_image)"

    review_tests
}

# as_deploy_user CMD...: CMD as the deploy user.
as_deploy_user() { runuser -u "$TEST_USER" -- "$@"; }

# stackship_db_check: `stackship db check dev` as the deploy user; output in $WORK/db-check.out.
stackship_db_check() {
    as_deploy_user "$ENV_DIR/current/stackship" --root "$WORK/srv/deploy" db check dev >"$WORK/db-check.out" 2>&1
}

# db_check_passes SECONDS: polls stackship_db_check until it passes, for at most SECONDS.
db_check_passes() {
    local deadline=$((SECONDS + $1)) state="$ENV_DIR/backups/state.json"
    # The check passes once a backup is there; the same run's test restore comes after it, and
    # the repository check (restic check, the off-site copy fetched back and test-restored) last.
    until stackship_db_check && grep -q '^ok   test restore: passed' "$WORK/db-check.out" \
        && grep -q '^ok   repository check: passed' "$WORK/db-check.out"; do
        ((SECONDS >= deadline)) || { sleep 5; continue; }
        sed 's/^/    | /' "$WORK/db-check.out" >&2
        if [[ ! -s "$state" ]]; then
            fail "no ${state} $1s after the schedule was installed: the scheduled run never ran (cron or the systemd timer not running?) or failed before recording anything (backups/ holds: $(backups_listed))"
        else
            printf '    state.json: %s\n' "$(jq -c . "$state" 2>&1)" >&2
            fail "stackship db check dev still fails $1s after the schedule was installed (its output and state.json above)"
        fi
    done
}

# backups_listed: what $ENV_DIR/backups holds, on one line.
backups_listed() { find "$ENV_DIR/backups" -mindepth 1 -maxdepth 1 -printf '%f ' 2>&1 || true; }

# newest_dump: the name of the newest dated backup of dev in $ENV_DIR/backups, or nothing.
newest_dump() {
    find "$ENV_DIR/backups" -maxdepth 1 -type f -name "$(stack_name dev)-*T*Z.dump" -printf '%f\n' 2>/dev/null \
        | sort | tail -n 1
}

# dump_is_private NAME: the backup NAME is there, mode 0600, owned by the deploy user.
dump_is_private() {
    [[ -n "$1" ]] || fail "no $(stack_name dev)-<time>.dump in ${ENV_DIR}/backups (it holds: $(backups_listed))"
    local got
    got="$(stat -c '%a %U' "$ENV_DIR/backups/$1")"
    [[ "$got" == "600 ${TEST_USER}" ]] || fail "${1}: mode and owner ${got}, want 600 ${TEST_USER}"
}

# store_holds NAME STORE: the restic repository STORE, read here as root (no cache, no lock: it
# writes nothing into the store), has a snapshot holding the backup NAME.
store_holds() {
    local restic=(restic -r "$2" --password-file "$ENV_DIR/secrets/backup-repository-password" --no-cache --no-lock)
    local snapshots
    [[ -n "$1" ]] || fail "no dated backup to look for"
    snapshots="$("${restic[@]}" snapshots --json 2>&1)" || fail "restic snapshots in ${2} failed: ${snapshots}"
    if jq -e --arg n "$1" 'any(.[].paths[]; . == $n or endswith("/" + $n))' <<<"$snapshots" >/dev/null 2>&1; then
        return 0
    fi
    if "${restic[@]}" ls latest 2>/dev/null | grep -qF -- "/$1"; then
        return 0
    fi
    fail "no snapshot in ${2} holds ${1} (snapshots: $(jq -c '[.[] | {time, paths}]' <<<"$snapshots" 2>/dev/null || printf '%s' "$snapshots"))"
}

# store_reachable DIR: the deploy user lists DIR on the store over SFTP, with the key and the
# host key in the environment's secrets/ only.
store_reachable() {
    local out
    out="$(as_deploy_user sftp -F /dev/null -P "$PORT" -b - -o StrictHostKeyChecking=yes \
        -o "UserKnownHostsFile=$ENV_DIR/secrets/backup-known-hosts" -o GlobalKnownHostsFile=/dev/null \
        -o IdentitiesOnly=yes -o IdentityAgent=none -o ConnectTimeout=10 -i "$ENV_DIR/secrets/backup-ssh-key" \
        "${STORE_USER}@127.0.0.1" <<<"ls ${1}" 2>&1)" || fail "sftp ${STORE_USER}@127.0.0.1:${PORT} failed: ${out}"
}

# mentions_i TEXT FILE: FILE mentions TEXT, in any case.
mentions_i() { grep -qiF -- "$1" "$2" || fail "$2 does not mention '$1': $(paste -sd' ' "$2")"; }

# secret_in_no_file SECRET FILE...: no file under $WORK but those in a secrets/ directory, nor any
# FILE, holds SECRET.
secret_in_no_file() {
    local secret="$1" found
    shift
    found="$(grep -rlF -D skip --exclude-dir=secrets -- "$secret" "$WORK" "$@" 2>/dev/null || true)"
    [[ -z "$found" ]] || fail "it is in: ${found//$'\n'/, }"
}

# secret_not_in_docker SECRET: neither docker service ls nor docker inspect of any service or
# container (running or not) shows SECRET.
secret_not_in_docker() {
    local secret="$1" id found=()
    local -a services containers
    if docker service ls 2>/dev/null | grep -qF -- "$secret"; then found+=("docker service ls"); fi
    mapfile -t services < <(docker service ls -q)
    for id in "${services[@]}"; do
        if docker service inspect "$id" 2>/dev/null | grep -qF -- "$secret"; then
            found+=("service $(docker service inspect -f '{{.Spec.Name}}' "$id" 2>/dev/null || printf '%s' "$id")")
        fi
    done
    mapfile -t containers < <(docker ps -aq)
    for id in "${containers[@]}"; do
        if docker inspect "$id" 2>/dev/null | grep -qF -- "$secret"; then
            found+=("container $(docker inspect -f '{{.Name}}' "$id" 2>/dev/null || printf '%s' "$id")")
        fi
    done
    ((${#found[@]} == 0)) || fail "it is in: ${found[*]}"
}

# secret_not_in_git SECRET: no file the repository tracks holds SECRET.
secret_not_in_git() {
    local rc=0
    git -C "$ROOT" grep -qF -- "$1" || rc=$?
    ((rc != 0)) || fail "git -C ${ROOT} grep finds it: $(git -C "$ROOT" grep -lF -- "$1" | paste -sd' ')"
    ((rc == 1)) || fail "git -C ${ROOT} grep failed (exit ${rc})"
}

# backup_schedule_tests: off-site backups turned on as an operator does it, on the dev stack the
# job just deployed: an SFTP store (a second user of this machine, SFTP only, through the test's
# sshd), its key, host key and a repository password in the environment's secrets/,
# BACKUP_REPOSITORY in deploy.env, setup-server.sh again. Then the every-minute schedule (cron
# or the systemd timer) alone dumps the database, copies the dump to the store and test-restores
# it. The schedule stays; the settings and secrets go, so later sections run without them.
backup_schedule_tests() {
    local unit="${STACKSHIP_PROJECT}-db-backup-dev" secrets="$ENV_DIR/secrets"
    local cmd="$ENV_DIR/current/stackship db scheduled dev" wait_s=240
    local store_home store password dump setup_rc
    if [[ ! -x "$ENV_DIR/current/stackship" ]]; then
        check "backup: a deployed release to run the schedule from" fail "no ${ENV_DIR}/current/stackship: the deploy above failed"
        return 0
    fi

    # The store: an SFTP-only user whose home holds the restic repository.
    if id "$STORE_USER" >/dev/null 2>&1; then
        userdel -r "$STORE_USER" >/dev/null 2>&1 || die "cannot remove the user ${STORE_USER} a previous run left"
    fi
    useradd --create-home --user-group --shell /usr/sbin/nologin "$STORE_USER" || die "useradd ${STORE_USER} failed"
    # '*': no password, yet not locked (sshd without PAM refuses locked accounts).
    usermod -p '*' "$STORE_USER"
    store_home="$(getent passwd "$STORE_USER" | cut -d: -f6)"
    store="${store_home}/restic"
    install -d -m 0700 -o "$STORE_USER" -g "$STORE_USER" "$store_home/.ssh" "$store"
    ssh-keygen -q -t ed25519 -N '' -C backup -f "$WORK/backup_key"
    (umask 077 && printf 'restrict %s\n' "$(cut -d' ' -f1,2 "$WORK/backup_key.pub")" > "$store_home/.ssh/authorized_keys")
    chown "$STORE_USER:$STORE_USER" "$store_home/.ssh/authorized_keys"
    # The manager's side: the store's key and host key, readable by the deploy user only.
    install -m 0600 -o "$TEST_USER" -g "$TEST_USER" "$WORK/backup_key" "$secrets/backup-ssh-key"
    rm -f "$WORK/backup_key"
    install -m 0600 -o "$TEST_USER" -g "$TEST_USER" "$WORK/known_hosts" "$secrets/backup-known-hosts"
    check "backup: the store is SFTP only" grep -qx 'forcecommand internal-sftp' \
        <(/usr/sbin/sshd -T -f "$WORK/sshd_config" -C "user=${STORE_USER},host=manager,addr=127.0.0.1")
    check "backup: the deploy user reaches the store over SFTP with the key and host key in secrets/" \
        store_reachable "$store"

    # On a host whose cron or systemd already runs the schedule, a run against the plain deploy
    # may have made a backup (not due again for a day): let a run in flight end, and start from
    # no backup, as a new server would.
    if [[ -e "$ENV_DIR/backups/state.json" ]]; then
        log "backup: a scheduled run already made a backup (cron or systemd runs here): starting from none"
        wait_until 120 "the scheduled run in flight to end" bash -c "! pgrep -u '$TEST_USER' -f 'stackship db scheduled' >/dev/null"
        rm -f "$ENV_DIR/backups/state.json" "$ENV_DIR/backups/$(stack_name dev)-"*.dump
    fi

    # The settings, without the password first: setup-server.sh says how to make it.
    printf 'BACKUP_REPOSITORY=sftp://%s@127.0.0.1:%s/%s\nBACKUP_EVERY=3600\nBACKUP_TEST_RESTORE_EVERY=3600\n' \
        "$STORE_USER" "$PORT" "$store" >> "$ENV_DIR/deploy.env"
    "$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" >/dev/null 2>"$WORK/setup-backup.log" || true
    expect_contains "backup: setup-server.sh warns when BACKUP_REPOSITORY has no password file" \
        "$secrets/backup-repository-password is missing or empty" "$WORK/setup-backup.log"
    expect_contains "backup: ... and says how to make one" "head -c 32 /dev/urandom | base64 > $secrets/backup-repository-password" \
        "$WORK/setup-backup.log"
    install -m 0600 -o "$TEST_USER" -g "$TEST_USER" /dev/null "$secrets/backup-repository-password"
    head -c 32 /dev/urandom | base64 > "$secrets/backup-repository-password"
    password="$(cat "$secrets/backup-repository-password")"
    setup_rc=0
    "$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" >/dev/null 2>"$WORK/setup-backup.log" || setup_rc=$?
    expect_eq "backup: setup-server.sh passes with BACKUP_REPOSITORY and its password set" 0 "$setup_rc"
    [[ "$setup_rc" -eq 0 ]] || tail -n 20 "$WORK/setup-backup.log" | sed 's/^/  | /'
    expect_absent "backup: ... and no longer warns about the password" "is missing or empty" "$WORK/setup-backup.log"
    if [[ -d /run/systemd/system ]]; then
        check "backup: a timer every minute" grep -qx 'OnCalendar=minutely' "/etc/systemd/system/${unit}.timer"
        check "backup: ... running stackship db scheduled dev as the deploy user, with the deploy root" \
            bash -c "grep -qxF 'ExecStart=${cmd}' /etc/systemd/system/${unit}.service && grep -qxF 'User=${TEST_USER}' /etc/systemd/system/${unit}.service && grep -qxF 'Environment=STACKSHIP_DEPLOY_ROOT=${WORK}/srv/deploy' /etc/systemd/system/${unit}.service"
    else
        check "backup: a cron entry every minute running stackship db scheduled dev as the deploy user" \
            grep -qxF "* * * * * ${TEST_USER} ${cmd} 2>&1 | logger -t ${unit}" "/etc/cron.d/${unit}"
        check "backup: ... with the deploy root" grep -qxF "STACKSHIP_DEPLOY_ROOT=${WORK}/srv/deploy" "/etc/cron.d/${unit}"
    fi
    expect_eq "backup: the backups directory is the deploy user's alone" "700 ${TEST_USER}" \
        "$(stat -c '%a %U' "$ENV_DIR/backups" 2>/dev/null)"

    # Nothing runs the schedule here (a container): Debian's cron, as on a server without systemd.
    if [[ ! -d /run/systemd/system ]] && ! pgrep -x cron >/dev/null 2>&1; then
        apt_install cron
        log "backup: starting cron (no cron daemon runs here; stopped at the end of this section)"
        cron -f </dev/null >>"$WORK/cron.log" 2>&1 &
        CRON_PID=$!
    fi
    log "backup: waiting up to ${wait_s}s for the schedule to back up, copy off-site and test-restore"
    check "backup: stackship db check dev passes within ${wait_s}s of setup (as the deploy user)" db_check_passes "$wait_s"
    check "backup: the scheduled run recorded its state" test -s "$ENV_DIR/backups/state.json"
    dump="$(newest_dump)"
    check "backup: it left a dated dump in the backups directory, mode 600, the deploy user's" dump_is_private "$dump"
    check "backup: the off-site store holds a restic snapshot of it" store_holds "$dump" "$store"
    local check_rc=0
    stackship_db_check || check_rc=$?
    expect_eq "backup: stackship db check dev passes" 0 "$check_rc"
    check "backup: ... and says the test restore passed" mentions_i "test restore: passed" "$WORK/db-check.out"
    check "backup: ... and the off-site copy is there" mentions_i "off-site copy: " "$WORK/db-check.out"
    check "backup: ... and the off-site copy was fetched back over SFTP and test-restored" mentions_i "test-restored: " "$WORK/db-check.out"
    check "backup: the repository password is in no file of this run but its own (logs, state, schedule)" \
        secret_in_no_file "$password" "/etc/cron.d/${unit}" "/etc/systemd/system/${unit}.service"
    check "backup: ... nor in docker service ls or docker inspect of any service or container" \
        secret_not_in_docker "$password"
    check "backup: ... nor in the repository" secret_not_in_git "$password"

    # The schedule stays (nothing is due for a day now); the settings and secrets go.
    if [[ -n "$CRON_PID" ]]; then
        kill "$CRON_PID" 2>/dev/null || true
        wait "$CRON_PID" 2>/dev/null || true
        CRON_PID=""
    fi
    sed -i '/^BACKUP_/d' "$ENV_DIR/deploy.env"
    rm -f "$secrets/backup-repository-password" "$secrets/backup-ssh-key" "$secrets/backup-known-hosts"
}

# review_tests: .gitlab-ci.yml's review-deploy and review-stop jobs through gitlab-ci-local, as
# the deploy user over SSH: the MR's stack on its own port, then nothing of it left.
review_tests() {
    local stack url left kind
    stack="$(stack_name "review-${REVIEW_IID}")"
    url="http://127.0.0.1:$((20000 + REVIEW_IID))"
    RUN_JOB=review-deploy gcl_job BUILT_BACKEND_TAG="$NEXT_TAG"
    expect_eq "review: the review-deploy job passes" 0 "$GCL_RC"
    [[ "$GCL_RC" -eq 0 ]] || tail -n 30 "$WORK/gcl.log" | sed 's/^/  | /'
    expect_eq "review: the job reports the stack's URL (dotenv report review.env)" "REVIEW_URL=${url}" \
        "$(cat "$WORK/repo/review.env" 2>/dev/null)"
    expect_eq "review: the stack runs the image the pipeline built" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${NEXT_TAG}" \
        "$(docker service inspect "${stack}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' 2>/dev/null | sed 's/@sha256:.*//')"
    check "review: it answers on its own port" curl -sS -m 10 -f -o /dev/null "${url}/api/service/version"
    expect_eq "review: dev is still on its own tag" \
        "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${GOOD_TAG}" "$(service_image)"
    expect_absent "review: the registry password is not in the job log" "$(registry_password)" "$WORK/gcl.log"
    RUN_JOB=review-stop RUN_LABELS=review-deploy gcl_job
    expect_eq "review: the review-stop job passes" 0 "$GCL_RC"
    [[ "$GCL_RC" -eq 0 ]] || tail -n 30 "$WORK/gcl.log" | sed 's/^/  | /'
    left="$(for kind in service network config secret volume; do
        docker "$kind" ls --format '{{.Name}}' | grep -E "^${stack}[-_]" | sed "s/^/${kind} /" || true
    done)"
    expect_eq "review: nothing of ${stack} is left in the swarm" "" "${left//$'\n'/, }"
    check "review: its deploy directory is gone" test ! -e "$WORK/srv/deploy/review/${REVIEW_IID}"
    check "review: no upload of the stop job is left" bash -c "! compgen -G '$WORK/srv/deploy/review/.stop-*'"
    RUN_JOB=review-stop RUN_LABELS=review-deploy gcl_job
    expect_eq "review: a second review-stop passes (nothing left to remove)" 0 "$GCL_RC"
    expect_contains "review: ... and says so" "nothing of ${stack} is left" "$WORK/gcl.log"
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        "") ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    require_root
    if [[ -z "${STACKSHIP_E2E_LOCK_HELD:-}" ]]; then
        need flock "apt-get install util-linux"
        log "waiting for ${E2E_LOCK}"
        exec flock -o "$E2E_LOCK" env STACKSHIP_E2E_LOCK_HELD=1 "$0" "$@"
    fi
    apt_install openssh-server openssh-client rsync jq python3
    ensure_gitlab_ci_local
    need cargo "install the Rust toolchain (rustup)"
    ensure_docker
    ensure_stack
    WORK="$(mktemp -d /tmp/stackship-ssh-e2e.XXXXXX)"
    trap cleanup EXIT
    # The deploy tools as the build job makes them: statically linked.
    "$ROOT/scripts/ci/build-tools.sh" --out "$WORK/tools" >/dev/null || die "scripts/ci/build-tools.sh failed"
    # The deploy user reaches its deploy root below this directory.
    chmod 0755 "$WORK"
    ssh-keygen -q -t ed25519 -N '' -C ci -f "$WORK/ci_key"
    ssh-keygen -q -t ed25519 -N '' -C other -f "$WORK/other_key"
    ssh-keygen -q -t ed25519 -N '' -C host -f "$WORK/host_key"
    ssh-keygen -q -t ed25519 -N '' -C impostor -f "$WORK/impostor_host_key"

    # A checkout as the pipeline has it (a git repository with an origin, as gitlab-ci-local
    # wants), the dev backend and frontend pinned.
    mkdir -p "$WORK/repo"
    cp -R "$ROOT/scripts" "$ROOT/deploy-manifests" "$ROOT/docker-compose.dev.yaml" "$ROOT/docker-compose.review.yaml" \
        "$ROOT/.gitlab-ci.yml" "$WORK/repo/"
    git -C "$WORK/repo" init -q -b main
    git -C "$WORK/repo" add -A
    git -C "$WORK/repo" -c user.name=test -c user.email=test@localhost commit -q -m release
    git -C "$WORK/repo" remote add origin https://gitlab.invalid/group/stackship.git
    test_images
    "$WORK/repo/scripts/pin-image.sh" dev backend "$NEXT_TAG"
    "$WORK/repo/scripts/pin-image.sh" dev frontend "$GOOD_TAG"

    PORT="$(free_port)"
    SETUP_ARGS=(--ci-key "$WORK/ci_key.pub" --user "$TEST_USER" --envs dev --deploy-root "$WORK/srv/deploy"
        --ssh-host 127.0.0.1 --ssh-port "$PORT" --host-key "$WORK/host_key.pub" --sshd-config-dir "$WORK/sshd.d")
    "$ROOT/scripts/server/setup-server.sh" "${SETUP_ARGS[@]}" > "$WORK/known_hosts" || die "setup-server.sh failed"
    printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$WORK/impostor_host_key.pub")" > "$WORK/wrong_known_hosts"
    # The manager's own settings (the third-party images this machine uses).
    printf 'POSTGRES_IMAGE=%s\nNGINX_IMAGE=%s\nHAPROXY_IMAGE=%s\n' "$POSTGRES_IMAGE" "$NGINX_IMAGE" "$HAPROXY_IMAGE" \
        > "$WORK/srv/deploy/dev/deploy.env"
    start_sshd

    run_tests
    harness_summary
}

main "$@"
