#!/usr/bin/env bash
# restore_prod passes its arguments on (as env for the deploy); most callers give none.
# shellcheck disable=SC2119
# End-to-end tests of the stack on this machine's swarm, through the proxy.
#
# Brings both stacks up first (scripts/up.sh --all, idempotent), runs every check as a named
# test (PASS name / FAIL name), and ends with "N passed, M failed". Tests that change the prod
# stack put it back as they found it, so a run leaves prod and dev up and healthy with the
# current build (scripts/down.sh removes them), and a second run starts from that state.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# playwright-core drives Debian's chromium; installed outside the repository.
PLAYWRIGHT_VERSION="1.65.1"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/test-stack.sh [--no-up] [--help] [TEST...]

Runs the end-to-end tests (all, or the named ones) against the local swarm: this file's own,
then those of the modules scripts/tests/stack-*.sh, in order.
  --no-up   do not run scripts/up.sh --all first (the stacks are already up)

Tests:
USAGE
    printf '%s\n' "${ALL_TESTS[@]}" | paste -sd ' ' | fold -s -w 92 | sed 's/^/  /'
}

test_https_serves_frontend() {
    local body redirect
    body="$(curl_env prod -f https://localhost/)" || fail "GET https://localhost/ failed (certificate checked against the self-signed CA)"
    grep -q '<script src="app.js"' <<<"$body" || fail "https://localhost/ is not the frontend page"
    grep -q 'id="log-form"' <<<"$body" || fail "the page has no log form"
    curl_env prod -f https://localhost/app.js | grep -q '/api/logs' || fail "app.js not served"
    redirect="$(curl -sS -m 10 -o /dev/null -w '%{http_code} %{redirect_url}' http://localhost/some/path)"
    [[ "$redirect" == "301 https://localhost/some/path" ]] || fail "http://localhost/ does not redirect to https (got '${redirect}')"
}

test_version_is_built_tag() {
    local body version name
    body="$(curl_env prod -f https://localhost/api/service/version)" || fail "GET /api/service/version failed"
    version="$(json version <<<"$body")"
    name="$(json name <<<"$body")"
    [[ "$name" == backend ]] || fail "name is '${name}', expected backend"
    [[ "$version" == "$TAG" ]] || fail "version is '${version}', expected the built tag ${TAG}"
}

test_log_entry_is_listed() {
    local message created id listed
    message="e2e entry $(date -u +%s%N)"
    created="$(curl_env prod -f -X POST -H 'Content-Type: application/json' \
        --data "{\"message\":\"${message}\"}" https://localhost/api/log)" || fail "POST /api/log failed"
    id="$(json id <<<"$created")"
    [[ -n "$id" ]] || fail "POST /api/log returned no id: ${created}"
    [[ "$(json message <<<"$created")" == "$message" ]] || fail "POST /api/log echoed a different message"
    listed="$(curl_env prod -f 'https://localhost/api/logs?limit=50')" || fail "GET /api/logs failed"
    python3 -c '
import json, sys
entries = json.load(sys.stdin)["entries"]
sys.exit(0 if any(str(e["id"]) == sys.argv[1] and e["message"] == sys.argv[2] for e in entries) else 1)
' "$id" "$message" <<<"$listed" || fail "entry ${id} is not in GET /api/logs"
}

# task_ips SERVICE NETWORK: the IPs of a service's running containers on a network.
task_ips() {
    local c
    for c in $(docker ps -q --filter "label=com.docker.swarm.service.name=$1" --filter status=running); do
        docker inspect "$c" --format "{{with index .NetworkSettings.Networks \"$2\"}}{{.IPAddress}}{{end}}"
    done
}

# postgres_answers PID IP: a PostgreSQL server answers on IP:5432, seen from the network
# namespace of process PID. It speaks the protocol (an SSLRequest must get 'S' or 'N'): a bare
# TCP connect proves nothing where something upstream accepts every connection.
postgres_answers() {
    nsenter -t "$1" -n timeout 8 python3 -c '
import socket, struct, sys
try:
    with socket.create_connection((sys.argv[1], 5432), timeout=3) as s:
        s.settimeout(3)
        s.sendall(struct.pack("!ii", 8, 80877103))
        sys.exit(0 if s.recv(1) in (b"S", b"N") else 1)
except OSError:
    sys.exit(1)
' "$2" 2>/dev/null
}

test_dev_prod_isolated() {
    local dev_version prod_pg_ips dev_pg_ips dev_backend dev_pid dev_pg prod_backend prod_pid ip
    dev_version="$(curl -sS -m 10 -f "$(env_url dev)/api/service/info" | json environment)" \
        || fail "dev does not answer on $(env_url dev)"
    [[ "$dev_version" == dev ]] || fail "dev reports environment '${dev_version}'"
    [[ "$(curl_env prod -f https://localhost/api/service/info | json environment)" == prod ]] \
        || fail "prod does not report environment prod"
    prod_pg_ips="$(task_ips "${PROD_STACK}_postgres" "${PROD_STACK}_data")"
    dev_pg_ips="$(task_ips "${DEV_STACK}_postgres" "${DEV_STACK}_data")"
    [[ -n "$prod_pg_ips" && -n "$dev_pg_ips" ]] || fail "postgres task IPs not found"
    dev_backend="$(container_of "${DEV_STACK}_backend")"
    [[ -n "$dev_backend" ]] || fail "no running dev backend container"
    dev_pid="$(docker inspect "$dev_backend" --format '{{.State.Pid}}')"
    # Control: the dev backend reaches its own database...
    for ip in $dev_pg_ips; do
        postgres_answers "$dev_pid" "$ip" || fail "dev backend cannot reach dev postgres ${ip}:5432 (control)"
    done
    # ...and not prod's, by address (overlay subnets differ per stack and are not routed)...
    for ip in $prod_pg_ips; do
        if postgres_answers "$dev_pid" "$ip"; then fail "dev backend reaches prod postgres ${ip}:5432"; fi
    done
    # The same the other way round: prod's backend does not reach dev's database.
    prod_backend="$(container_of "${PROD_STACK}_backend")"
    [[ -n "$prod_backend" ]] || fail "no running prod backend container"
    prod_pid="$(docker inspect "$prod_backend" --format '{{.State.Pid}}')"
    for ip in $prod_pg_ips; do
        postgres_answers "$prod_pid" "$ip" || fail "prod backend cannot reach prod postgres ${ip}:5432 (control)"
    done
    for ip in $dev_pg_ips; do
        if postgres_answers "$prod_pid" "$ip"; then fail "prod backend reaches dev postgres ${ip}:5432"; fi
    done
    # ...nor by name.
    dev_pg="$(container_of "${DEV_STACK}_postgres")"
    if docker exec "$dev_pg" getent hosts "${PROD_STACK}_postgres" >/dev/null 2>&1; then
        fail "dev resolves ${PROD_STACK}_postgres"
    fi
    docker exec "$dev_pg" getent hosts postgres >/dev/null 2>&1 || fail "dev does not resolve its own postgres (control)"
    # Own secrets: each stack mounts its own password secrets.
    [[ "$(docker service inspect "${DEV_STACK}_postgres" --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}')" \
        == "${DEV_STACK}-db-bootstrap-password" ]] || fail "dev postgres does not use ${DEV_STACK}-db-bootstrap-password"
    [[ "$(docker service inspect "${DEV_STACK}_backend" --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}')" \
        =~ ^${DEV_STACK}-db-password-v[0-9]+$ ]] || fail "dev backend does not use a ${DEV_STACK}-db-password-v<N>"
}

ensure_browser_tools() {
    apt_install chromium
    need node "install Node.js"
    need npm "install npm"
    if [[ ! -f "${STACKSHIP_DATA}/cache/playwright/node_modules/playwright-core/package.json" ]] \
        || ! grep -q "\"version\": \"${PLAYWRIGHT_VERSION}\"" "${STACKSHIP_DATA}/cache/playwright/node_modules/playwright-core/package.json"; then
        log "npm install playwright-core@${PLAYWRIGHT_VERSION}"
        mkdir -p "${STACKSHIP_DATA}/cache/playwright"
        (cd "${STACKSHIP_DATA}/cache/playwright" \
            && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent \
                --no-save "playwright-core@${PLAYWRIGHT_VERSION}") >&2 || fail "npm install playwright-core failed"
    fi
}

test_browser_shows_version_and_entry() {
    ensure_browser_tools || return 1
    mkdir -p "$ARTIFACTS"
    PLAYWRIGHT_CORE="${STACKSHIP_DATA}/cache/playwright/node_modules/playwright-core" \
        timeout 180 node "$(repo_root)/scripts/tests/browser-check.mjs" https://localhost/ "$TAG" \
        "${ARTIFACTS}/frontend.png" || fail "browser check failed"
}

test_config_change_rolls_backend_only() {
    mkdir -p "$ARTIFACTS"
    local before_tasks after_tasks before_config after_config title line svc out report rc=0
    out="$(mktemp)" report="${ARTIFACTS}/rollout-load.json"
    before_tasks="$(all_running_tasks "$PROD_STACK")"
    before_config="$(backend_config_name)"
    title="stackship e2e $(date -u +%H%M%S)"
    set_prod_title "$title"
    # Under 100 req/s of mixed reads and writes: a good release, so the canary gate passes it.
    load_during "$report" deploy_prod > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "stackship deploy prod failed after the config change (exit ${rc}): $(tail -n 15 "$out")"
    after_config="$(backend_config_name)"
    after_tasks="$(all_running_tasks "$PROD_STACK")"
    [[ "$after_config" != "$before_config" ]] || fail "backend config name unchanged (${after_config})"
    [[ "$(curl_env prod -f https://localhost/api/service/info | json title)" == "$title" ]] \
        || fail "/api/service/info does not show the new title"
    while IFS= read -r line; do
        svc="${line%%:*}"
        if [[ "$svc" == "${PROD_STACK}_backend" ]]; then
            [[ "$(grep "^${svc}:" <<<"$after_tasks")" != "$line" ]] || fail "backend tasks did not roll"
        else
            [[ "$(grep "^${svc}:" <<<"$after_tasks")" == "$line" ]] || fail "${svc} restarted: ${line} -> $(grep "^${svc}:" <<<"$after_tasks")"
        fi
    done <<<"$before_tasks"
    docker config inspect "$before_config" >/dev/null 2>&1 \
        || fail "the previous config ${before_config} was removed (a rollback needs it)"
    # The proxy followed the task IPs: no request failed while the backend rolled.
    [[ "$(load_failed "$report")" -eq 0 ]] || fail "requests failed while the backend rolled: $(load_summary "$report")"
    # The canary gate judged the new version on that traffic, and says with which figures.
    grep -q "backend: canary healthy: new version 0 of [0-9]* failed" "$out" \
        || fail "the good release's summary has no healthy canary verdict: $(grep canary "$out" | tail -n 5)"
    log "rollout under load: $(load_summary "$report"); $(grep -o 'canary healthy.*' "$out" | head -n 1)"
    # Without traffic the gate says it cannot judge, and the rollout goes on (the default).
    log "restoring the prod config, with a database backup running beside the deploy"
    # A backup while the backend rolls: neither fails the other, and the dump restores to exactly
    # the rows it recorded (the test restore compares).
    local bdir bout backup_pid backup_rc=0 file
    bdir="$(mktemp -d)" bout="$(mktemp)"
    "$(tools_dir)/stackship" --root "$(dirname "$PROD_DIR")" db backup prod --dir "$bdir" > "$bout" 2>&1 &
    backup_pid=$!
    rc=0
    restore_prod > "$out" 2>&1 || rc=$?
    wait "$backup_pid" || backup_rc=$?
    ((rc == 0)) || fail "restoring the prod config failed (exit ${rc}) while a backup ran: $(tail -n 15 "$out")"
    ((backup_rc == 0)) || fail "the backup during the deploy failed (exit ${backup_rc}): $(tail -n 15 "$bout")"
    file="$(tail -n 1 "$bout")"
    "$(tools_dir)/stackship" --root "$(dirname "$PROD_DIR")" db verify prod "$file" > "$bout" 2>&1 \
        || fail "the backup taken during the deploy does not restore as recorded: $(tail -n 5 "$bout")"
    grep -q "test restore passed: .*, as recorded at backup time" "$bout" || fail "the test restore compared nothing: $(tail -n 3 "$bout")"
    rm -rf "$bdir" "$bout" "${PROD_DIR}/backups"
    grep -q "too little traffic to judge the canary: the new version answered [0-9]* requests.*the rollout goes on unjudged" "$out" \
        || fail "a rollout without traffic is not reported as too little to judge: $(grep canary "$out" | tail -n 5)"
    [[ "$(curl_env prod -f https://localhost/api/service/info | json title)" == stackship ]] \
        || fail "title not restored"
    rm -f "$out"
}

test_noop_redeploy_restarts_nothing() {
    local before after out records
    out="$(mktemp)"
    # The same release twice: the second deploy changes nothing and records nothing.
    deploy_prod > "$out" 2>&1 || fail "stackship deploy prod failed: $(tail -n 20 "$out")"
    before="$(all_running_tasks "$PROD_STACK")"
    records="$(find "${PROD_DIR}/history" -name '*.json' | wc -l)"
    deploy_prod > "$out" 2>&1 || fail "stackship deploy prod failed: $(tail -n 20 "$out")"
    after="$(all_running_tasks "$PROD_STACK")"
    [[ "$before" == "$after" ]] || fail "tasks changed: ${before} -> ${after}"
    grep -q "nothing changed since deploy .*: no new record" "$out" || fail "a no-op deploy does not say it changed nothing: $(tail -n 5 "$out")"
    [[ "$(find "${PROD_DIR}/history" -name '*.json' | wc -l)" == "$records" ]] || fail "a no-op deploy added a deploy record"
    rm -f "$out"
}

test_unhealthy_image_rolls_back() {
    local bad out rc=0 started
    out="$(mktemp)"
    # The real binary, but the server never starts: the healthcheck can never pass.
    bad="$(push_variant unhealthy 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM; while :; do sleep 1; done"]')"
    started=$SECONDS
    deploy_prod BACKEND_TAG="$bad" > "$out" 2>&1 || rc=$?
    log "deploy of an unhealthy image: exit ${rc} after $((SECONDS - started))s"
    ((rc != 0)) || fail "stackship deploy exited 0 with a backend that never turns healthy"
    assert_rolled_back_to_tag "$out"
    grep -q "rolled back" "$out" || fail "the deploy output does not say the backend was rolled back"
    rm -f "$out"
}

test_crash_at_start_rolls_back() {
    local bad out rc=0
    out="$(mktemp)"
    bad="$(push_variant crash 'CMD ["/bin/sh", "-c", "echo fatal: cannot start >&2; exit 1"]')"
    deploy_prod BACKEND_TAG="$bad" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "stackship deploy exited 0 with a backend that exits 1 at start"
    assert_rolled_back_to_tag "$out"
    grep -q "non-zero exit (1)" "$out" || fail "the task error (non-zero exit (1)) is not in the deploy output"
    grep -q "fatal: cannot start" "$out" || fail "the failed task's log line is not in the deploy output"
    rm -f "$out"
}

test_wrong_db_password_rolls_back() {
    local out rc=0
    out="$(mktemp)"
    copy_prod || fail "copy step failed"
    # The release's config names a password the database refuses.
    sed -i 's#^password_file = .*#password = "not-the-database-password"#' "$(prod_config)"
    grep -q '^password = "not-the-database-password"' "$(prod_config)" || fail "could not set a wrong password"
    deploy_prod > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "stackship deploy exited 0 with a backend that cannot log in to its database"
    assert_rolled_back_to_tag "$out"
    grep -q "password authentication failed" "$out" || fail "the deploy output does not say why (password authentication failed): $(grep -A12 -- "--- backend failed" "$out")"
    if grep -q "not-the-database-password" "$out"; then fail "the password appears in the deploy output"; fi
    rm -f "$out"
    restore_prod >/dev/null 2>&1 || fail "restoring prod failed"
}

test_failing_migration_rolls_back() {
    local out rc=0 version checksum
    out="$(mktemp)"
    # A migration that fails on the new tasks only: sqlx refuses to run when an applied
    # migration's checksum differs from the one built in (running tasks migrated at start).
    # The tampered checksum would fail the old version's tasks as well, unlike a real failing
    # migration, which only the new version has: it is put back as soon as the rollback began,
    # so the tasks the rollback starts (if Swarm replaced an old one) find what they expect.
    version="$(prod_psql "SELECT version FROM _sqlx_migrations ORDER BY version LIMIT 1")"
    checksum="$(prod_psql "SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = ${version}")"
    [[ -n "$checksum" ]] || fail "no applied migration found"
    prod_psql "UPDATE _sqlx_migrations SET checksum = sha384('tampered') WHERE version = ${version}" >/dev/null
    set_prod_title "migration test $(date -u +%H%M%S)"
    local pid deadline=$((SECONDS + 300))
    deploy_prod > "$out" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && ! grep -q "rolling back\|FAILED" "$out" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    prod_psql "UPDATE _sqlx_migrations SET checksum = decode('${checksum}', 'hex') WHERE version = ${version}" >/dev/null
    wait "$pid" || rc=$?
    ((rc != 0)) || fail "stackship deploy exited 0 with a backend whose migration fails"
    assert_rolled_back_to_tag "$out"
    grep -q "previously applied but has been modified" "$out" || fail "the deploy output does not say the migration failed: $(grep -A12 -- "--- backend failed" "$out")"
    [[ "$(curl_env prod -f https://localhost/api/service/info | json title)" == stackship ]] \
        || fail "the old release does not keep serving its config"
    rm -f "$out"
    restore_prod >/dev/null 2>&1 || fail "restoring prod failed"
}

test_poll_version_reports() {
    local out rc=0
    out="$(mktemp)"
    "$(repo_root)/scripts/poll-version.sh" https://localhost/api/service/version \
        --cacert "$STACKSHIP_PROD_CERT" --count 3 --interval 0.2 > "$out" 2>&1 \
        || fail "poll-version.sh --count 3 failed: $(cat "$out")"
    [[ "$(grep -c " 200 .*\"version\":\"${TAG}\"" "$out")" == 3 ]] || fail "expected 3 lines with 200 and ${TAG}: $(cat "$out")"
    grep -q -- "--- 3 requests in .*, 0 errors" "$out" || fail "no summary line: $(cat "$out")"
    "$(repo_root)/scripts/poll-version.sh" https://localhost/api/service/version \
        --cacert "$STACKSHIP_PROD_CERT" --until-version "$TAG" \
        --ready-url https://localhost/api/service/ready --timeout 10 > "$out" 2>&1 \
        || fail "--until-version ${TAG} did not succeed: $(cat "$out")"
    "$(repo_root)/scripts/poll-version.sh" https://localhost/api/service/version \
        --cacert "$STACKSHIP_PROD_CERT" --until-version no-such-version \
        --interval 0.5 --timeout 3 > "$out" 2>&1 || rc=$?
    ((rc == 1)) || fail "--until-version of a version that never answers exited ${rc}, expected 1"
    grep -q "did not answer" "$out" || fail "no message for the missing version"
    # Errors are counted: a port nothing listens on.
    rc=0
    "$(repo_root)/scripts/poll-version.sh" http://127.0.0.1:9/api/service/version --count 2 --interval 0.1 > "$out" 2>&1 || rc=$?
    grep -q -- "--- 2 requests in .*, 2 errors" "$out" || fail "connection errors not counted: $(cat "$out")"
    rm -f "$out"
}

test_proxy_errors_are_json() {
    "$(repo_root)/scripts/tests/test-proxy-errors.sh" >&2 || fail "scripts/tests/test-proxy-errors.sh failed"
}

test_concurrent_deploys_take_turns() {
    local a b rc_a=0 rc_b=0 pid_a pid_b
    a="$(mktemp)" b="$(mktemp)"
    copy_prod || fail "copy step failed"
    deploy_prod > "$a" 2>&1 &
    pid_a=$!
    deploy_prod > "$b" 2>&1 &
    pid_b=$!
    wait "$pid_a" || rc_a=$?
    wait "$pid_b" || rc_b=$?
    ((rc_a == 0 && rc_b == 0)) || fail "concurrent deploys: exit ${rc_a} and ${rc_b}: $(tail -n 5 "$a" "$b")"
    grep -q "another prod deploy holds" "$a" "$b" || fail "neither deploy waited for the other's lock"
    [[ "$(grep -c "holding the prod deploy lock" "$a" "$b" | awk -F: '{s+=$2} END {print s}')" == 2 ]] \
        || fail "both deploys should have held the lock in turn"
    rm -f "$a" "$b"
}

test_copy_step_touches_one_environment() {
    local dev_dir before after
    dev_dir="$(env_deploy_dir dev)"
    before="$(find "$dev_dir" -printf '%p %T@\n' | sort)"
    copy_prod || fail "copy step failed"
    after="$(find "$dev_dir" -printf '%p %T@\n' | sort)"
    [[ "$before" == "$after" ]] || fail "the prod copy step changed files of dev"
    [[ -x "${PROD_DIR}/current/rollout-watcher" && -x "${PROD_DIR}/current/config-hasher" ]] || fail "tools missing from the prod release"
    local tool
    "${PROD_DIR}/current/stackship" rollback --help > /dev/null || fail "stackship rollback --help failed"
    "${PROD_DIR}/current/stackship" db --help > /dev/null || fail "stackship db --help failed"
    # The day-2 scripts it replaced are not shipped any more.
    for tool in db-backup.sh db-restore.sh db-tunnel.sh ops-lib.sh secret.sh; do
        [[ ! -e "${PROD_DIR}/current/${tool}" ]] || fail "${tool} is still in the prod release"
    done
    [[ -f "${PROD_DIR}/deploy.env" ]] || fail "the copy step removed prod's deploy.env"
    [[ -z "$(find "$PROD_DIR" -maxdepth 1 -name '.incoming.*')" ]] || fail "a staging directory was left behind"
}

ALL_TESTS=(https_serves_frontend version_is_built_tag log_entry_is_listed dev_prod_isolated
    browser_shows_version_and_entry config_change_rolls_backend_only
    noop_redeploy_restarts_nothing unhealthy_image_rolls_back crash_at_start_rolls_back
    wrong_db_password_rolls_back failing_migration_rolls_back concurrent_deploys_take_turns
    copy_step_touches_one_environment poll_version_reports
    proxy_errors_are_json)

# The test modules: more test_ functions, each module adding its names to STACK_TESTS.
for module in "$(repo_root)"/scripts/tests/stack-*.sh; do
    [[ -e "$module" ]] || continue
    # shellcheck source=/dev/null
    source "$module"
done
ALL_TESTS+=("${STACK_TESTS[@]}")

main() {
    local up=1 tests=() name started=$SECONDS
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --no-up) up="" ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) tests+=("$1") ;;
        esac
        shift
    done
    [[ ${#tests[@]} -gt 0 ]] || tests=("${ALL_TESTS[@]}")
    for name in "${tests[@]}"; do
        declare -F "test_${name}" >/dev/null || die "unknown test '${name}'"
    done
    require_root
    need python3
    need nsenter "apt-get install util-linux"
    if [[ -n "$up" ]]; then
        log "bringing up prod and dev (scripts/up.sh --all)"
        "$(repo_root)/scripts/up.sh" --all >/dev/null || die "scripts/up.sh --all failed"
    fi
    # The deployed image reference is repo:tag@sha256:...; the tag is what the tests expect.
    TAG="$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' \
        | sed -e 's/@sha256:.*//' -e 's/.*://')" || die "no prod stack (run without --no-up)"
    if [[ -n "$up" && "$TAG" != "$("$(repo_root)/scripts/ci/image-tag.sh")" ]]; then
        die "prod runs ${TAG}, not the tag just built ($("$(repo_root)/scripts/ci/image-tag.sh"))"
    fi
    log "testing tag ${TAG}"
    for name in "${tests[@]}"; do
        run_test "$name"
    done
    log "finished in $((SECONDS - started))s${FAILED_NAMES[*]:+; failed: ${FAILED_NAMES[*]}}"
    harness_summary
}

main "$@"
