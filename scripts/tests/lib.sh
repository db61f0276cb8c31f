# Shared by the end-to-end tests (scripts/tests/test-stack.sh and the test modules it sources from
# scripts/tests/stack-*.sh, test-multinode.sh, rollout-test.sh): the PASS/FAIL harness
# (scripts/tests/harness.sh) and helpers that deploy and read the local prod stack. Sourced after
# scripts/lib.sh; defines functions and globals only.
# shellcheck shell=bash
# shellcheck disable=SC2034  # used by the scripts that source this file

# shellcheck source=scripts/tests/harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

PROD_STACK="$(stack_name prod)"
# shellcheck disable=SC2034
DEV_STACK="$(stack_name dev)"
PROD_DIR="$(env_deploy_dir prod)"
# shellcheck disable=SC2034
ARTIFACTS="${STACKSHIP_DATA}/test-artifacts"
# The image tag prod runs when the tests start (set by the runner).
TAG=""
# Test modules add their test names here (run in this order after test-stack.sh's own).
STACK_TESTS=()

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

# deploy_prod [VAR=VALUE...]: stackship deploy prod from the prod deploy directory, as up.sh runs it.
deploy_prod() {
    env "$@" REGISTRY_USER="$STACKSHIP_REGISTRY_USER" REGISTRY_PASSWORD="$(registry_password)" \
        "${PROD_DIR}/current/stackship" deploy prod --release "${PROD_DIR}/current"
}

# copy_prod: the copy step for prod with this checkout's files and tools.
copy_prod() {
    "$(repo_root)/scripts/ci/copy-manifests.sh" --prod --dest "$PROD_DIR" \
        --bin-dir "$(tools_dir)"
}

# restore_prod [VAR=VALUE...]: the prod deploy files of this checkout, deployed.
restore_prod() { copy_prod && deploy_prod "$@"; }

# prod_config: the backend config file of the prod release in the deploy directory.
prod_config() { printf '%s/current/deploy-manifests/prod/backend/config.toml\n' "$PROD_DIR"; }

# set_prod_title TITLE: copy step, then a new title in the release's backend config.
set_prod_title() {
    copy_prod || fail "copy step failed"
    sed -i "s/^title = .*/title = \"$1\"/" "$(prod_config)"
    grep -qF "title = \"$1\"" "$(prod_config)" || fail "could not change the title in $(prod_config)"
}

# prod_version: the version prod's backend answers through the proxy.
prod_version() { curl_env prod -f https://localhost/api/service/version | json version; }

# push_variant SUFFIX DOCKERFILE_LINES: a backend image built FROM the current one, pushed as
# <tag>-SUFFIX; prints that tag.
push_variant() {
    local suffix="$1" lines="$2" image dir
    image="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend"
    dir="$(mktemp -d)"
    printf 'FROM %s:%s\n%s\n' "$image" "$TAG" "$lines" > "$dir/Dockerfile"
    docker build -q -t "${image}:${TAG}-${suffix}" "$dir" >/dev/null 2>&1 || { rm -rf "$dir"; fail "building the ${suffix} image failed"; }
    rm -rf "$dir"
    docker push -q "${image}:${TAG}-${suffix}" >/dev/null || fail "pushing the ${suffix} image failed"
    printf '%s-%s\n' "$TAG" "$suffix"
}

# next_backend_tag: a backend that answers another version than TAG: <TAG>-next, the same code
# built again with that version (as scripts/rollout-test.sh makes it); built and pushed when the
# registry does not have it yet.
next_backend_tag() {
    local image="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${TAG}-next" base
    if ! docker pull -q "$image" >/dev/null 2>&1; then
        base="$("$(repo_root)/scripts/base-images.sh" | sed -n 's/^BASE_IMAGE=//p')"
        [[ -n "$base" ]] || { fail "no base image"; return 1; }
        REGISTRY="$STACKSHIP_REGISTRY_ADDR" "$(repo_root)/scripts/ci/build-images.sh" --tag "${TAG}-next" \
            --push --base-image "$base" backend >/dev/null || { fail "building the backend ${TAG}-next failed"; return 1; }
    fi
    [[ "$(docker run --rm --entrypoint /app/backend "$image" --version)" == *"${TAG}-next"* ]] \
        || { fail "${image} does not report version ${TAG}-next"; return 1; }
    printf '%s-next\n' "$TAG"
}

# assert_rolled_back_to_tag OUTPUT_FILE [VERSION]: the backend is back on TAG and answers
# VERSION (default TAG: a variant built FROM an image keeps that image's version).
assert_rolled_back_to_tag() {
    local state
    state="$(docker service inspect "${PROD_STACK}_backend" --format '{{.UpdateStatus.State}}')"
    if [[ "$state" != rollback_completed ]]; then
        # Everything a reader needs to tell why: Swarm's message, the task history, the deploy.
        mkdir -p "$ARTIFACTS"
        cp "$1" "${ARTIFACTS}/unexpected-rollback-state.log" 2>/dev/null || true
        fail "backend update state is '${state}', expected rollback_completed; Swarm: $(docker service inspect "${PROD_STACK}_backend" --format '{{.UpdateStatus.Message}}'); tasks: $(docker service ps "${PROD_STACK}_backend" --no-trunc --format '{{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}' | sed 's#^[^ ]*/backend:#backend:#' | head -n 8 | paste -sd ';'); deploy output (kept in ${ARTIFACTS}/unexpected-rollback-state.log): $(tail -n 25 "$1" | paste -sd '|')"
    fi
    [[ "$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" == *"/backend:${TAG}@"* ]] \
        || fail "backend spec is not back on ${TAG}"
    [[ "$(prod_version)" == "${2:-$TAG}" ]] || fail "after the rollback the version is '$(prod_version)'"
    grep -q "backend: FAILED" "$1" || fail "the deploy output has no 'backend: FAILED' summary line"
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

# container_of SERVICE: one running container of a service on this node.
container_of() { docker ps -q --filter "label=com.docker.swarm.service.name=$1" --filter status=running | head -n 1; }

# prod_psql SQL: runs SQL in prod's database (as the backend role), prints the rows.
prod_psql() {
    local pg
    pg="$(container_of "${PROD_STACK}_postgres")"
    [[ -n "$pg" ]] || fail "no running prod postgres container"
    docker exec "$pg" psql -U backend -d backend -v ON_ERROR_STOP=1 -Atc "$1"
}

# renewed_pair KEY CRT: a renewed certificate for the local prod stack's names: a new EC key pair
# for localhost and 127.0.0.1, self-signed like scripts/up.sh's (key 0600). Returns openssl's status.
renewed_pair() {
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$1" -out "$2" 2>/dev/null)
}

# load_during REPORT CMD...: runs CMD while scripts/tests/loadgen.py sends a bounded load through the
# prod proxy (version reads, log lists and writes, keep-alive on and off; 100 req/s, at most
# 600 s); the load's JSON report (requests, failed, failed_by_kind, ...) goes to REPORT. The load
# trusts $LOAD_CACERT (default: prod's certificate) for the name $LOAD_SERVER_NAME (default: localhost).
# Returns CMD's status; fails if the load generator itself failed.
load_during() {
    local report="$1" stop load_pid rc=0
    shift
    stop="$(mktemp)"
    python3 "$(repo_root)/scripts/tests/loadgen.py" --url https://localhost --cacert "${LOAD_CACERT:-$STACKSHIP_PROD_CERT}" \
        ${LOAD_SERVER_NAME:+--server-name "$LOAD_SERVER_NAME"} \
        --rate 100 --min-requests 1 --max-seconds 600 --stop-file "$stop" --run "e2e-$$" \
        --out "$report" > "${report}.log" 2>&1 &
    load_pid=$!
    sleep 2
    "$@" || rc=$?
    rm -f "$stop"
    wait "$load_pid" || fail "the load generator failed: $(tail -n 5 "${report}.log")"
    return "$rc"
}

# load_summary REPORT: "F failed of N requests {kind: count}"; load_failed REPORT: F.
load_summary() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%d failed of %d requests %s" % (d["failed"], d["requests"], d["failed_by_kind"]))' "$1"
}
load_failed() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$1"; }

# The role the readonly release connects as: it may read every table (and run the migration
# check, which needs CREATE on the schema) but write none.
CANARY_READER=stackship_canary_reader

# canary_reader_role create|drop: the reader role in prod's database.
canary_reader_role() {
    if [[ "$1" == create ]]; then
        prod_psql "DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${CANARY_READER}') THEN
                CREATE ROLE ${CANARY_READER} NOLOGIN IN ROLE pg_read_all_data;
            END IF; END \$\$;
            GRANT CREATE ON SCHEMA public TO ${CANARY_READER};
            GRANT ${CANARY_READER} TO CURRENT_USER;" >/dev/null
    else
        # (idempotent: a run that stopped half-way may have left it, or not)
        prod_psql "DO \$\$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '${CANARY_READER}') THEN
                REVOKE CREATE ON SCHEMA public FROM ${CANARY_READER};
                DROP ROLE ${CANARY_READER};
            END IF; END \$\$;" >/dev/null
    fi
}
