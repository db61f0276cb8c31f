#!/usr/bin/env bash
# The rollout load test: a bounded load through the prod edge and proxy (scripts/tests/loadgen.py:
# version, log list and log writes, keep-alive on and off) while each of twelve rollouts happens,
# counting every failed request; then the acknowledged rows are checked in the database, and a
# Postgres restart is timed. Writes bench/results/rollout.txt, ending with key=value lines.
#
# Needs the local prod stack (scripts/up.sh). Leaves prod as this checkout deploys it.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/tests/lib.sh"

RATE="${RATE:-200}"
MIN_REQUESTS="${MIN_REQUESTS:-10000}"
PG_RESTART_LOAD_S="${PG_RESTART_LOAD_S:-300}"
WORK=""
RESULTS=()
KV=()
# duration / floor of every rollout that succeeded.
RATIOS=()
# Set while the canary's reader role exists (cleanup drops it).
CANARY_ROLE=""

usage() {
    cat <<USAGE
Usage: scripts/rollout-test.sh [--help]

Runs twelve rollout cases against the local prod stack under load and writes
bench/results/rollout.txt. Each case sends at least \$MIN_REQUESTS (${MIN_REQUESTS}) requests
at \$RATE (${RATE}) req/s through https://localhost:
  1 backend image update      2 backend config change     3 backend never healthy (rollback)
  4 backend exits 1 at start  5 backend with a wrong DB password (rollback)
  6 frontend image update     7 nginx-proxy config change 8 certificate renewed (new key pair)
  9 nginx-proxy image update  10 edge image update (stop-first: the gap is measured)
  11 canary: a config whose reads and writes time out (healthchecks pass)
  12 canary: an image whose writes fail (healthchecks pass)
Then: every acknowledged POST is in the database, and Postgres is restarted under the same
load, which goes on for \$PG_RESTART_LOAD_S (${PG_RESTART_LOAD_S}) s after /ready answers 200
again: /ready's return is timed, and every request that fails after it is counted (target 0).
Takes about 30 minutes. Run scripts/up.sh first.
USAGE
}

cleanup() {
    [[ -z "$WORK" ]] || restore_certificate
    [[ -z "$CANARY_ROLE" ]] || canary_reader_role drop || true
    [[ -z "$WORK" ]] || rm -rf "$WORK"
}

prod_file() { printf '%s/current/deploy-manifests/prod/%s\n' "$PROD_DIR" "$1"; }

json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$@"; }

# variant IMAGE SUFFIX DOCKERFILE_LINES: IMAGE:TAG rebuilt with extra lines, pushed as TAG-SUFFIX.
variant() {
    local repo="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/$1" dir
    dir="$(mktemp -d "$WORK/variant.XXXXXX")"
    printf 'FROM %s:%s\n%s\n' "$repo" "$TAG" "$3" > "$dir/Dockerfile"
    docker build -q -t "${repo}:${TAG}-$2" "$dir" >/dev/null || die "building ${repo}:${TAG}-$2 failed"
    docker push -q "${repo}:${TAG}-$2" >/dev/null || die "pushing ${repo}:${TAG}-$2 failed"
}

# build_next_backend: the backend built again with version TAG-next (a real new version).
build_next_backend() {
    local base line
    base="$("$(repo_root)/scripts/base-images.sh" | sed -n 's/^BASE_IMAGE=//p')"
    [[ -n "$base" ]] || die "no base image"
    REGISTRY="$STACKSHIP_REGISTRY_ADDR" "$(repo_root)/scripts/ci/build-images.sh" --tag "${TAG}-next" \
        --push --base-image "$base" backend >/dev/null || die "building the backend ${TAG}-next failed"
    line="$(docker run --rm --entrypoint /app/backend "${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}/backend:${TAG}-next" --version)"
    [[ "$line" == *"${TAG}-next"* ]] || die "the next backend reports '${line}'"
}

# third_party_variant KEY NAME: the third-party image prod runs under KEY (NGINX_IMAGE,
# HAPROXY_IMAGE in its deploy.env) rebuilt with one more label (a new image, same software), pushed
# to the local registry as <project>-test/rollout-NAME:next (scripts/down.sh --purge removes it);
# prints it as repo:tag@sha256:...
third_party_variant() {
    local key="$1" name="$2" from dir target digest
    from="$(sed -n "s/^${key}=//p" "$PROD_DIR/deploy.env" | tail -n 1)"
    [[ -n "$from" ]] || die "${PROD_DIR}/deploy.env has no ${key}"
    target="${STACKSHIP_REGISTRY_ADDR}/${STACKSHIP_PROJECT}-test/rollout-${name}:next"
    dir="$(mktemp -d "$WORK/variant.XXXXXX")"
    printf 'FROM %s\nLABEL stackship.rollout-test=%s\n' "$from" "$$" > "$dir/Dockerfile"
    docker build -q -t "$target" "$dir" >/dev/null || die "building ${target} failed"
    docker push -q "$target" >/dev/null || die "pushing ${target} failed"
    digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$target" \
        | sed -n "s#^${target%:*}@##p" | head -n 1)"
    [[ "$digest" == sha256:* ]] || die "no registry digest for ${target}"
    printf '%s@%s\n' "$target" "$digest"
}

# renew_certificate: a renewed certificate in the prod deploy directory's secrets/: a new key pair
# for the same names, self-signed like scripts/up.sh's. The load trusts the old and the new one
# (as a client trusting the CA that issues both). The originals are kept in $WORK.
renew_certificate() {
    local dir="$PROD_DIR/secrets"
    cp -p "$dir/tls.crt" "$WORK/tls.crt.orig"
    cp -p "$dir/tls.key" "$WORK/tls.key.orig"
    renewed_pair "$WORK/tls.key.new" "$WORK/tls.crt.new" || die "openssl req failed"
    cat "$WORK/tls.crt.orig" "$WORK/tls.crt.new" > "$WORK/trust.pem"
}

# deploy_renewed ARGS...: the renewed pair installed, then deploy_prod ARGS.
deploy_renewed() {
    install -m 0644 "$WORK/tls.crt.new" "$PROD_DIR/secrets/tls.crt"
    install -m 0600 "$WORK/tls.key.new" "$PROD_DIR/secrets/tls.key"
    deploy_prod "$@"
}

# restore_certificate: the original pair back in place (the next deploy serves it again).
restore_certificate() {
    [[ -f "$WORK/tls.crt.orig" && -f "$WORK/tls.key.orig" ]] || return 0
    cp -p "$WORK/tls.crt.orig" "$PROD_DIR/secrets/tls.crt"
    cp -p "$WORK/tls.key.orig" "$PROD_DIR/secrets/tls.key"
}

# start_load BASE MIN_REQUESTS MAX_SECONDS RUN: the mixed load through https://localhost in the
# background (its PID in LOAD_PID), trusting $CASE_CACERT (default: prod's certificate), while
# BASE.running exists; its report goes to BASE.json, its output to BASE.load.
start_load() {
    local base="$1"
    : > "${base}.running"
    python3 "$(repo_root)/scripts/tests/loadgen.py" --url https://localhost \
        --cacert "${CASE_CACERT:-$STACKSHIP_PROD_CERT}" --rate "$RATE" \
        --min-requests "$2" --max-seconds "$3" --stop-file "${base}.running" \
        --run "$4" --out "${base}.json" > "${base}.load" 2>&1 &
    LOAD_PID=$!
}

# run_case N NAME EXPECT(ok|fail) SERVICE CMD...: CMD under load; records the figures, keyed
# case<N>_ (or $CASE_KEY_). The load trusts $CASE_CACERT (default: prod's certificate).
run_case() {
    local n="$1" name="$2" expect="$3" service="$4" rc=0 started took report out stop
    shift 4
    report="$WORK/case${n}.json"
    out="$WORK/case${n}.log"
    stop="$WORK/case${n}.running"
    log "case ${n}: ${name}"
    start_load "$WORK/case${n}" "$MIN_REQUESTS" 900 "case${n}-$$"
    local load_pid=$LOAD_PID
    sleep 2
    started=$SECONDS
    "$@" > "$out" 2>&1 || rc=$?
    took=$((SECONDS - started))
    CASE_ENDED="$(date +%s.%N)" CASE_OUT="$out"
    rm -f "$stop"
    wait "$load_pid" || die "the load generator failed in case ${n}: $(cat "$WORK/case${n}.load")"
    local requests failed versions floor duration ratio="" result
    requests="$(json_get "$report" 'd["requests"]')"
    failed="$(json_get "$report" 'd["failed"]')"
    versions="$(json_get "$report" '", ".join("%s at %s-%ss (%d answers)" % (x["version"], x["at"], x["until"], x["count"]) for x in d["versions_over_time"])')"
    if [[ "$expect" == ok ]]; then
        ((rc == 0)) && result="deploy ok" || result="DEPLOY FAILED (exit ${rc}, expected success)"
    else
        ((rc != 0)) && result="deploy failed as expected after ${took}s" || result="DEPLOY SUCCEEDED (expected a failure)"
    fi
    floor="$(json_get "$PROD_DIR/last-rollout.json" "next((s['floor_seconds'] or 0) for s in d['services'] if s['service'] == '${service}')" 2>/dev/null || echo 0)"
    duration="$(json_get "$PROD_DIR/last-rollout.json" "next(s['seconds'] for s in d['services'] if s['service'] == '${service}')" 2>/dev/null || echo 0)"
    if [[ "$expect" == ok ]] && python3 -c "import sys; sys.exit(0 if float('${floor}') > 0 else 1)"; then
        ratio="$(python3 -c "print(round(${duration} / ${floor}, 2))")"
    fi
    RESULTS+=("case ${n} ${name}: ${requests} requests, ${failed} failed $(json_get "$report" 'd["failed_by_kind"]'); ${result}; ${service} settled in ${duration}s${ratio:+, floor ${floor}s, ratio ${ratio}}; versions ${versions}")
    KV+=("${CASE_KEY:-case${n}}_requests=${requests}" "${CASE_KEY:-case${n}}_failed=${failed}")
    CASE_TOOK=$took CASE_REPORT="$report"
    [[ -z "$ratio" ]] || RATIOS+=("$ratio")
    log "case ${n}: ${RESULTS[-1]}"
    if [[ "$expect" == fail ]]; then
        ((rc != 0)) || die "case ${n}: the deploy did not fail: $(tail -n 20 "$out")"
        [[ "$(curl_env prod -f https://localhost/api/service/info | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')" != *-unhealthy* ]] || die "a bad version answers"
    else
        ((rc == 0)) || die "case ${n}: the deploy failed: $(tail -n 30 "$out")"
    fi
}

# canary_figures NAME: the last case's canary keys: requests, failed, failed after the rollback
# settled (the deploy returned), and how long the gate took from the first new task serving
# to its verdict.
canary_figures() {
    local name="$1" after detect
    after="$(json_get "$CASE_REPORT" "sum(1 for t in d['failures_at'] if d['started_at'] + t > ${CASE_ENDED})")"
    detect="$(sed -n 's/.*backend: canary failed real requests: .*(after \([0-9.]*\)s)$/\1/p' "$CASE_OUT" | head -n 1)"
    [[ -n "$detect" ]] || die "case ${name}: the canary gate gave no failed verdict: $(grep canary "$CASE_OUT" | tail -n 5)"
    KV+=("canary_${name}_failed_after_rollback=${after}" "canary_${name}_detect_s=${detect}")
    RESULTS[-1]+="; canary verdict after ${detect}s, ${after} failed after the rollback"
}

# check_rows: every acknowledged row of every case is in the database with its message.
check_rows() {
    local pg lost
    pg="$(docker ps -q --filter "label=com.docker.swarm.service.name=${PROD_STACK}_postgres" --filter status=running | head -n 1)"
    [[ -n "$pg" ]] || die "no running postgres container"
    docker exec "$pg" psql -U backend -d backend -AtF $'\t' -c \
        "SELECT id, message FROM log_entries WHERE message LIKE 'load case%-$$ w%'" > "$WORK/rows.tsv"
    lost="$(python3 - "$WORK" <<'PY'
import glob, json, sys
work = sys.argv[1]
stored = {}
for line in open(work + "/rows.tsv"):
    i, m = line.rstrip("\n").split("\t", 1)
    stored[int(i)] = m
acked = [r for f in sorted(glob.glob(work + "/case*.json")) for r in json.load(open(f))["acked_rows"]]
lost = [r for r in acked if stored.get(r[0]) != r[1]]
print(len(lost), len(acked))
PY
)"
    ROWS_LOST="${lost%% *}"
    ROWS_ACKED="${lost##* }"
    log "acknowledged rows: ${ROWS_ACKED}, lost: ${ROWS_LOST}"
}

# pg_task_container: the container of the running prod postgres task (this node).
pg_task_container() {
    docker ps -q --filter "label=com.docker.swarm.service.name=${PROD_STACK}_postgres" --filter status=running | head -n 1
}

# postgres_restart: restarts Postgres the way an operator does (a forced service update, so
# Swarm stops the task and starts a new one; `docker restart` of a task's container would
# start a second server on the same data directory behind Swarm's back), under mixed load that
# goes on for PG_RESTART_LOAD_S (default 300) seconds after /ready is 200 again (four answers in
# a row, so every backend task is). /ready must turn 503 while it is down and 200 within 10 s
# after the new server answers; no request sent after that may fail (a pooled connection that
# died with the old server is replaced, or its statement sent again).
postgres_restart() {
    local old new="" t0 saw_503="" up_at="" ready_at="" status now streak=0 streak_at=""
    local report="$WORK/pg-restart.json" stop="$WORK/pg-restart.running"
    start_load "$WORK/pg-restart" 1 1200 "pg-restart-$$"
    local load_pid=$LOAD_PID
    sleep 5
    old="$(pg_task_container)"
    log "restarting postgres (docker service update --force ${PROD_STACK}_postgres)"
    t0=$(date +%s.%N)
    docker service update --force --detach "${PROD_STACK}_postgres" >/dev/null || die "cannot restart postgres"
    while python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) - float(sys.argv[2]) < 180 else 1)" "$(date +%s.%N)" "$t0"; do
        status="$(curl_env prod -o /dev/null -w '%{http_code}' https://localhost/api/service/ready 2>/dev/null || true)"
        now=$(date +%s.%N)
        [[ "$status" != 503 ]] || saw_503=1
        if [[ -z "$up_at" ]]; then
            new="$(pg_task_container)"
            if [[ -n "$new" && "$new" != "$old" ]] && docker exec "$new" pg_isready -q -h 127.0.0.1 -U backend >/dev/null 2>&1; then
                up_at=$now
            fi
        elif [[ "$status" == 200 ]]; then
            # Ready once four answers in a row say so: /ready reaches one backend task at a
            # time, and each must be ready again.
            ((streak++ > 0)) || streak_at=$now
            if ((streak >= 4)); then
                ready_at=$streak_at
                break
            fi
        else
            streak=0
        fi
        sleep 0.25
    done
    PG_SAW_503="${saw_503:-0}"
    PG_READY_AFTER="$([[ -n "$ready_at" ]] && python3 -c "print(round(${ready_at} - ${up_at}, 1))" || echo never)"
    log "postgres restart: /ready 503 while down: ${PG_SAW_503}; ready again ${PG_READY_AFTER}s after the new postgres answered"
    if [[ -n "$ready_at" ]]; then
        log "postgres restart: mixed load for ${PG_RESTART_LOAD_S}s more"
        sleep "$PG_RESTART_LOAD_S"
    fi
    rm -f "$stop"
    wait "$load_pid" || die "the load generator failed during the postgres restart: $(cat "$WORK/pg-restart.load")"
    PG_LOAD_REQUESTS="$(json_get "$report" 'd["requests"]')"
    PG_FAILED_AFTER_READY="$(json_get "$report" "sum(1 for t in d['failures_at'] if d['started_at'] + t > ${ready_at:-0})")"
    PG_FAILED="$(json_get "$report" 'd["failed"]')"
    log "postgres restart: ${PG_LOAD_REQUESTS} requests, ${PG_FAILED} failed, ${PG_FAILED_AFTER_READY} of them after /ready was 200 again"
}

main() {
    [[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; return 0; }
    [[ $# -eq 0 ]] || { usage >&2; die "unknown argument '$1'"; }
    require_root
    need python3
    need docker
    docker service inspect "${PROD_STACK}_backend" >/dev/null 2>&1 || die "no prod stack: run scripts/up.sh first"
    WORK="$(mktemp -d)"
    trap cleanup EXIT
    TAG="$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' | sed -e 's/@sha256:.*//' -e 's/.*://')"
    log "prod runs ${TAG}; preparing images"
    copy_prod >/dev/null 2>&1
    deploy_prod LOCK_WAIT=900 >/dev/null 2>&1 || die "prod does not deploy cleanly before the test"
    build_next_backend
    variant backend unhealthy 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM; while :; do sleep 1; done"]'
    variant backend crash 'CMD ["/bin/sh", "-c", "echo fatal: cannot start >&2; exit 1"]'
    variant frontend next 'LABEL stackship.rollout-test=next'

    run_case 1 "backend image update" ok backend deploy_prod BACKEND_TAG="${TAG}-next"
    local good_passed=0
    grep -q "backend: canary healthy" "$CASE_OUT" && good_passed=1
    ((good_passed)) || die "case 1: the good release under load was not judged healthy by the canary gate (see $CASE_OUT)"
    sed -i 's/^title = .*/title = "rollout test"/' "$(prod_file backend/config.toml)"
    run_case 2 "backend config change" ok backend deploy_prod BACKEND_TAG="${TAG}-next"
    run_case 3 "backend never healthy" fail backend deploy_prod BACKEND_TAG="${TAG}-unhealthy"
    local bad_image_fail_s=$CASE_TOOK
    run_case 4 "backend exits 1 at start" fail backend deploy_prod BACKEND_TAG="${TAG}-crash"
    local crash_fail_s=$CASE_TOOK
    cp "$(prod_file backend/config.toml)" "$WORK/config.toml.good"
    sed -i 's#^password_file = .*#password = "not-the-database-password"#' "$(prod_file backend/config.toml)"
    run_case 5 "backend with a wrong DB password" fail backend deploy_prod BACKEND_TAG="${TAG}-next"
    local wrong_pw_fail_s=$CASE_TOOK
    cp "$WORK/config.toml.good" "$(prod_file backend/config.toml)"
    run_case 6 "frontend image update" ok frontend deploy_prod BACKEND_TAG="${TAG}-next" FRONTEND_TAG="${TAG}-next"
    printf '\n# rollout test %s\n' "$$" >> "$(prod_file nginx-proxy/default.conf)"
    run_case 7 "nginx-proxy config change" ok nginx-proxy deploy_prod BACKEND_TAG="${TAG}-next" FRONTEND_TAG="${TAG}-next"
    renew_certificate
    CASE_KEY=cert_renewal CASE_CACERT="$WORK/trust.pem" \
        run_case 8 "certificate renewed" ok nginx-proxy deploy_renewed BACKEND_TAG="${TAG}-next" FRONTEND_TAG="${TAG}-next"
    local served
    served="$(openssl s_client -connect 127.0.0.1:443 -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)"
    [[ "$served" == "$(openssl x509 -in "$WORK/tls.crt.new" -noout -fingerprint -sha256)" ]] \
        || die "case 8: the proxy does not serve the renewed certificate"
    local nginx_next haproxy_next
    nginx_next="$(third_party_variant NGINX_IMAGE nginx)"
    CASE_KEY=proxy_image CASE_CACERT="$WORK/trust.pem" \
        run_case 9 "nginx-proxy image update" ok nginx-proxy deploy_renewed BACKEND_TAG="${TAG}-next" FRONTEND_TAG="${TAG}-next" \
        NGINX_IMAGE="$nginx_next"
    haproxy_next="$(third_party_variant HAPROXY_IMAGE haproxy)"
    CASE_KEY=edge_upgrade CASE_CACERT="$WORK/trust.pem" \
        run_case 10 "edge image update (stop-first)" ok edge deploy_renewed BACKEND_TAG="${TAG}-next" FRONTEND_TAG="${TAG}-next" \
        NGINX_IMAGE="$nginx_next" HAPROXY_IMAGE="$haproxy_next"
    local gap_ms
    gap_ms="$(json_get "$CASE_REPORT" 'int(((d["last_failure_at"] or 0) - (d["first_failure_at"] or 0)) * 1000) if d["failed"] else 0')"
    KV+=("edge_upgrade_gap_ms=${gap_ms}")

    # Releases that pass every healthcheck and fail real requests: the canary gate rolls them back.
    cp "$(prod_file backend/config.toml)" "$WORK/config.toml.good"
    sed -i 's/^request_timeout_ms = .*/request_timeout_ms = 1/' "$(prod_file backend/config.toml)"
    CASE_KEY=canary_timeout CASE_CACERT="$WORK/trust.pem" \
        run_case 11 "canary: config timing out reads and writes" fail backend deploy_renewed BACKEND_TAG="${TAG}-next" \
        FRONTEND_TAG="${TAG}-next" NGINX_IMAGE="$nginx_next" HAPROXY_IMAGE="$haproxy_next"
    canary_figures timeout
    cp "$WORK/config.toml.good" "$(prod_file backend/config.toml)"
    canary_reader_role create
    CANARY_ROLE=1
    variant backend readonly "ENV PGOPTIONS=\"-c role=${CANARY_READER}\""
    CASE_KEY=canary_readonly CASE_CACERT="$WORK/trust.pem" \
        run_case 12 "canary: image whose writes fail" fail backend deploy_renewed BACKEND_TAG="${TAG}-readonly" \
        FRONTEND_TAG="${TAG}-next" NGINX_IMAGE="$nginx_next" HAPROXY_IMAGE="$haproxy_next"
    canary_figures readonly
    canary_reader_role drop
    CANARY_ROLE=""
    KV+=("canary_good_passed=${good_passed}")

    check_rows
    CASE_CACERT="$WORK/trust.pem" postgres_restart
    log "restoring prod to ${TAG}, its certificate and this checkout's configs"
    restore_certificate
    copy_prod >/dev/null 2>&1
    deploy_prod LOCK_WAIT=900 >/dev/null 2>&1 || die "restoring prod failed"

    local worst
    worst="$(printf '%s\n' "${RATIOS[@]}" | sort -g | tail -n 1)"
    local out
    out="$(repo_root)/bench/results/rollout.txt"
    mkdir -p "$(dirname "$out")"
    {
        printf '# Rollout load test, %s, %s (%s cores), prod stack on one node\n' "$(date -u +%Y-%m-%d)" "$(uname -n)" "$(nproc)"
        printf '# load: %s req/s through https://localhost, >= %s requests per case, mix 40%% GET version, 30%% GET logs, 30%% POST log; half keep-alive\n' "$RATE" "$MIN_REQUESTS"
        printf '%s\n' "${RESULTS[@]}"
        printf 'bad releases reported failed after: never healthy %ss, exit 1 at start %ss, wrong DB password %ss (target: healthcheck window 22 s + 30 s = 52 s)\n' \
            "$bad_image_fail_s" "$crash_fail_s" "$wrong_pw_fail_s"
        printf 'case 10 gap: %s ms with failures (the edge binds the host ports: its old task stops before the new one binds; two edge nodes behind DNS or a floating IP remove the gap, README "The edge")\n' "$gap_ms"
        printf 'acknowledged rows: %s, lost: %s\n' "$ROWS_ACKED" "$ROWS_LOST"
        printf 'postgres restart (forced service update): /ready 503 while down: %s; ready again %ss after the new postgres answered (target <= 10 s)\n' "$PG_SAW_503" "$PG_READY_AFTER"
        printf 'postgres restart under load: %s requests, %s failed, %s of them after /ready was 200 again (then %ss more of load; target 0)\n' \
            "$PG_LOAD_REQUESTS" "$PG_FAILED" "$PG_FAILED_AFTER_READY" "$PG_RESTART_LOAD_S"
        printf '%s\n' "${KV[@]}"
        printf 'rollout_over_floor=%s\n' "$worst"
        printf 'bad_image_fail_s=%s\n' "$bad_image_fail_s"
        printf 'rows_lost=%s\n' "$ROWS_LOST"
        printf 'pg_restart_ready_s=%s\n' "$PG_READY_AFTER"
        printf 'pg_restart_failed_after_ready=%s\n' "$PG_FAILED_AFTER_READY"
    } > "$out"
    cat "$out"
}

main "$@"
