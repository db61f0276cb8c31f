#!/usr/bin/env bash
# End-to-end tests of the stack on this machine's swarm, through the proxy.
#
# Brings both stacks up first (scripts/up.sh --all, idempotent), runs every check as a named
# test (PASS name / FAIL name), and ends with "N passed, M failed". Tests that change the prod
# stack put it back as they found it, so a run leaves prod and dev up and healthy with the
# current build (scripts/down.sh removes them), and a second run starts from that state.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# playwright-core drives Debian's chromium; installed outside the repository.
PLAYWRIGHT_VERSION="1.65.1"
ARTIFACTS="${STACKSHIP_DATA}/test-artifacts"
PROD_STACK="$(stack_name prod)"
DEV_STACK="$(stack_name dev)"

TAG=""
PASSED=0
FAILED=0
FAILED_NAMES=()

usage() {
    cat <<'USAGE'
Usage: scripts/test-stack.sh [--no-up] [--help] [TEST...]

Runs the end-to-end tests (all, or the named ones) against the local swarm.
  --no-up   do not run scripts/up.sh --all first (the stacks are already up)

Tests: https_serves_frontend version_is_built_tag log_entry_is_listed dev_prod_isolated
       browser_shows_version_and_entry config_change_rolls_backend_only
       noop_redeploy_restarts_nothing unhealthy_image_rolls_back
USAGE
}

fail() { printf '    %s\n' "$*" >&2; return 1; }

# json FIELD: a top-level field of the JSON document on stdin.
json() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

# running_tasks SERVICE: sorted IDs of the tasks meant to run.
running_tasks() { docker service ps "$1" --filter desired-state=running -q | sort | tr '\n' ' '; }

# all_running_tasks STACK: "service: task ids" for every service of a stack.
all_running_tasks() {
    local svc
    for svc in $(docker stack services "$1" --format '{{.Name}}' | sort); do
        printf '%s: %s\n' "$svc" "$(running_tasks "$svc")"
    done
}

backend_config_name() {
    docker service inspect "${PROD_STACK}_backend" \
        --format '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}}{{end}}'
}

# deploy_prod [VAR=VALUE...]: deploy.sh --prod from the deploy directory, as up.sh runs it.
deploy_prod() {
    env "$@" REGISTRY_USER="$STACKSHIP_REGISTRY_USER" REGISTRY_PASSWORD="$(registry_password)" \
        ROLLOUT_TIMEOUT=300 "${STACKSHIP_DEPLOY_DIR}/deploy.sh" --prod
}

# restore_prod: the prod deploy files of this checkout, deployed.
restore_prod() {
    "$(repo_root)/scripts/copy-manifests.sh" --prod --dest "$STACKSHIP_DEPLOY_DIR" \
        --config-hasher "${CARGO_TARGET_DIR:-$(repo_root)/target}/release/config-hasher" \
        && deploy_prod
}

# traffic_during OUT CMD...: runs CMD while GETting /api/service/version through the proxy
# every 0.1 s (a new connection each time); one HTTP status per line in OUT.
traffic_during() {
    local out="$1" flag pid rc=0
    shift
    flag="$(mktemp)"
    : > "$out"
    (
        local deadline=$((SECONDS + 600))
        while [[ -e "$flag" ]] && ((SECONDS < deadline)); do
            curl_env prod -o /dev/null -w '%{http_code}\n' https://localhost/api/service/version >> "$out" 2>/dev/null \
                || printf 'error\n' >> "$out"
            sleep 0.1
        done
    ) &
    pid=$!
    "$@" || rc=$?
    rm -f "$flag"
    wait "$pid" || true
    return "$rc"
}

# no_failed_requests OUT: every request of a traffic_during run got 200.
no_failed_requests() {
    local total bad
    total="$(wc -l < "$1")"
    bad="$(grep -cvx 200 "$1" || true)"
    log "traffic during the rollout: ${total} requests, ${bad} not 200"
    ((total > 0)) || fail "no requests were made during the rollout"
    ((bad == 0)) || fail "${bad} of ${total} requests failed during the rollout: $(sort "$1" | uniq -c | tr '\n' ' ')"
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

# container_of SERVICE: one running container of a service on this node.
container_of() { docker ps -q --filter "label=com.docker.swarm.service.name=$1" --filter status=running | head -n 1; }

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
    # Own secrets: the two stacks mount different password secrets.
    [[ "$(docker service inspect "${DEV_STACK}_postgres" --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}')" \
        == "${DEV_STACK}-db-password" ]] || fail "dev postgres does not use ${DEV_STACK}-db-password"
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
        timeout 180 node "$(repo_root)/scripts/browser-check.mjs" https://localhost/ "$TAG" \
        "${ARTIFACTS}/frontend.png" || fail "browser check failed"
}

test_config_change_rolls_backend_only() {
    mkdir -p "$ARTIFACTS"
    local before_tasks after_tasks before_config after_config title config line svc
    before_tasks="$(all_running_tasks "$PROD_STACK")"
    before_config="$(backend_config_name)"
    title="stackship e2e $(date -u +%H%M%S)"
    "$(repo_root)/scripts/copy-manifests.sh" --prod --dest "$STACKSHIP_DEPLOY_DIR" \
        --config-hasher "${CARGO_TARGET_DIR:-$(repo_root)/target}/release/config-hasher" || fail "copy step failed"
    config="${STACKSHIP_DEPLOY_DIR}/deploy-manifests/prod/backend/config.toml"
    sed -i "s/^title = .*/title = \"${title}\"/" "$config"
    grep -qF "title = \"${title}\"" "$config" || fail "could not change the title in ${config}"
    traffic_during "${ARTIFACTS}/rollout-traffic.txt" deploy_prod \
        || fail "deploy.sh --prod failed after the config change"
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
    no_failed_requests "${ARTIFACTS}/rollout-traffic.txt"
    log "restoring the prod config"
    restore_prod || fail "restoring the prod config failed"
    [[ "$(curl_env prod -f https://localhost/api/service/info | json title)" == stackship ]] \
        || fail "title not restored"
}

test_noop_redeploy_restarts_nothing() {
    local before after
    before="$(all_running_tasks "$PROD_STACK")"
    deploy_prod || fail "deploy.sh --prod failed"
    after="$(all_running_tasks "$PROD_STACK")"
    [[ "$before" == "$after" ]] || fail "tasks changed: ${before} -> ${after}"
}

test_unhealthy_image_rolls_back() {
    local bad="${TAG}-unhealthy" image state version rc=0 dir
    image="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend"
    dir="$(mktemp -d)"
    # The real binary, but the server never starts: the healthcheck can never pass.
    printf 'FROM %s:%s\nCMD ["/bin/sh", "-c", "trap \\"exit 0\\" TERM; while :; do sleep 1; done"]\n' \
        "$image" "$TAG" > "$dir/Dockerfile"
    docker build -q -t "${image}:${bad}" "$dir" >/dev/null 2>&1 || fail "building the unhealthy image failed"
    rm -rf "$dir"
    docker push -q "${image}:${bad}" >/dev/null || fail "pushing the unhealthy image failed"
    deploy_prod BACKEND_TAG="$bad" || rc=$?
    ((rc != 0)) || fail "deploy.sh exited 0 with a backend that never turns healthy"
    state="$(docker service inspect "${PROD_STACK}_backend" --format '{{.UpdateStatus.State}}')"
    [[ "$state" == rollback_completed ]] || fail "backend update state is '${state}', expected rollback_completed"
    [[ "$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" == "${image}:${TAG}"* ]] \
        || fail "backend spec is not back on ${TAG}"
    version="$(curl_env prod -f https://localhost/api/service/version | json version)"
    [[ "$version" == "$TAG" ]] || fail "after the rollback the version is '${version}'"
}

# run_test NAME: runs test_NAME, prints PASS/FAIL with its duration.
run_test() {
    local name="$1" started=$SECONDS
    log "running ${name}"
    # A subshell with errexit: the first failed check ends the test (not the run).
    set +e
    (
        set -Eeuo pipefail
        "test_${name}"
    )
    local rc=$?
    set -e
    if ((rc == 0)); then
        printf 'PASS %s (%ss)\n' "$name" "$((SECONDS - started))"
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL %s (%ss)\n' "$name" "$((SECONDS - started))"
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
    fi
}

ALL_TESTS=(https_serves_frontend version_is_built_tag log_entry_is_listed dev_prod_isolated
    browser_shows_version_and_entry config_change_rolls_backend_only
    noop_redeploy_restarts_nothing unhealthy_image_rolls_back)

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
    if [[ -n "$up" && "$TAG" != "$("$(repo_root)/scripts/image-tag.sh")" ]]; then
        die "prod runs ${TAG}, not the tag just built ($("$(repo_root)/scripts/image-tag.sh"))"
    fi
    log "testing tag ${TAG}"
    for name in "${tests[@]}"; do
        run_test "$name"
    done
    log "finished in $((SECONDS - started))s${FAILED_NAMES[*]:+; failed: ${FAILED_NAMES[*]}}"
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    [[ "$FAILED" -eq 0 ]]
}

main "$@"
