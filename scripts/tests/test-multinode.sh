#!/usr/bin/env bash
# The multi-node tests: this machine's swarm (the manager) plus two worker nodes from
# scripts/tests/swarm-nodes.sh, with dev's database on a worker and prod's backend spread over all
# three. One scenario in order, each step building on the one before: placement and the first
# deploy, an update, pulls with the deploy's credentials after it, a drain and a node loss under
# load, a rollback. Figures go to the test artifacts (bench/results/multinode.txt with --record).
# At the end the worker nodes are removed and dev and prod run on the manager as before.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/tests/lib.sh
source "$(repo_root)/scripts/tests/lib.sh"

NODES="$(repo_root)/scripts/tests/swarm-nodes.sh"
DEV_DIR="$(env_deploy_dir dev)"
# The figures: under the test artifacts, so a run leaves the checkout as it was; --record writes
# the committed bench/results/multinode.txt instead.
RESULTS="${ARTIFACTS}/multinode.txt"
RECORDED_RESULTS="$(repo_root)/bench/results/multinode.txt"
# The worker that keeps dev's database (node label stackship.postgres.dev).
DB_WORKER="${STACKSHIP_PROJECT}-node-1"
# The longest a lost node's tasks may take to run elsewhere: Swarm marks a node down after
# missed heartbeats (5 s period), then reschedules; a new task pulls and passes its healthcheck.
NODE_LOSS_BOUND_S=90
WORK=""
MANAGER=""

ALL_TESTS=(first_deploy_places_services deploy_refuses_unplaceable_stack moved_database_label_is_refused
    update_spreads_backend drain_moves_backend_without_failures
    rescheduled_tasks_pull_with_deploy_credentials node_loss_is_bounded_and_counted rollback_reported_on_multinode)

usage() {
    cat <<USAGE
Usage: scripts/tests/test-multinode.sh [--keep-nodes] [--record] [TEST...]

Starts two worker nodes (scripts/tests/swarm-nodes.sh up 2), runs the multi-node tests in order and
writes their figures to ${RESULTS} (--record: to ${RECORDED_RESULTS#"$(repo_root)/"}). Needs prod and dev up (scripts/up.sh --all;
scripts/test.sh runs it first). At the end the nodes are removed (unless --keep-nodes) and dev
and prod are deployed on the manager again.

Tests: ${ALL_TESTS[*]}
USAGE
}

# node_of TASK_ID: the hostname of the node a task was scheduled on.
node_of() { docker node inspect "$(docker inspect "$1" --format '{{.NodeID}}')" --format '{{.Description.Hostname}}'; }

# running_on SERVICE: hostnames of the nodes running the service's tasks, one per line.
running_on() {
    local task
    for task in $(docker service ps "$1" --filter desired-state=running -q); do
        [[ "$(docker inspect "$task" --format '{{.Status.State}}')" == running ]] || continue
        node_of "$task"
    done | sort
}

# converged SERVICE N [AVOID]: N tasks run, none on node AVOID.
converged() {
    local nodes
    nodes="$(running_on "$1")"
    [[ "$(grep -c . <<<"$nodes")" -eq "$2" ]] || return 1
    [[ -z "${3:-}" ]] || ! grep -qxF "$3" <<<"$nodes"
}

# tasks_pulled STACK MIN: every running task of the stack on a worker has its image on that
# worker, and at least MIN tasks run on workers.
tasks_pulled() {
    local svc image node on_workers=0
    for svc in $(docker stack services "$1" --format '{{.Name}}'); do
        image="$(docker service inspect "$svc" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')"
        for node in $(running_on "$svc"); do
            [[ "$node" != "$MANAGER" ]] || continue
            on_workers=$((on_workers + 1))
            docker exec "$node" docker image ls --digests --format '{{.Digest}}' | grep -qxF "${image##*@}" \
                || fail "${svc} runs on ${node}, but ${node} has no image ${image}"
        done
    done
    ((on_workers >= $2)) || fail "${1}: ${on_workers} task(s) on workers, expected at least $2"
    log "${1}: ${on_workers} task(s) on workers, each with its image pulled there"
}

deploy_dev() {
    env REGISTRY_USER="$STACKSHIP_REGISTRY_USER" REGISTRY_PASSWORD="$(registry_password)" \
        "${DEV_DIR}/current/stackship" deploy dev --release "${DEV_DIR}/current"
}

copy_dev() {
    "$(repo_root)/scripts/ci/copy-manifests.sh" --dev --dest "$DEV_DIR" \
        --bin-dir "$(tools_dir)"
}

# move_label LABEL NODE: LABEL=true on NODE only.
move_label() {
    local id
    for id in $(docker node ls -q --filter "node.label=$1=true"); do
        docker node update --label-rm "$1" "$id" >/dev/null
    done
    docker node update --label-add "$1=true" "$2" >/dev/null
}

stack_gone() { [[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$1")" ]] && [[ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$1")" ]]; }

record() { printf '%s=%s\n' "$1" "$2" >> "$WORK/figures"; }

# Placement and the first deploy: dev from nothing, its database on a worker (the deploy
# creates the data directory there), the proxy on the edge node, everything pulled where it runs.
test_first_deploy_places_services() {
    local out="$WORK/first-deploy.out" pg_nodes owner rc=0
    docker stack rm "$DEV_STACK" >/dev/null 2>&1 || true
    wait_until 120 "the dev stack to be removed" stack_gone "$DEV_STACK"
    move_label stackship.postgres.dev "$DB_WORKER"
    docker exec "$DB_WORKER" test ! -e "/data/${STACKSHIP_PROJECT}/data/dev/postgres" \
        || fail "${DB_WORKER} already has a dev data directory"
    copy_dev >/dev/null || fail "dev copy step failed"
    deploy_dev > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "the first dev deploy on three nodes failed (exit ${rc}): $(tail -n 20 "$out")"
    grep -q "preparing /data/${STACKSHIP_PROJECT}/data/dev/postgres on node ${DB_WORKER}" "$out" \
        || fail "the deploy did not prepare the data directory on ${DB_WORKER}"
    owner="$(docker exec "$DB_WORKER" stat -c '%u %a' "/data/${STACKSHIP_PROJECT}/data/dev/postgres")"
    [[ "$owner" == "999 700" ]] || fail "dev data directory on ${DB_WORKER}: owner/mode '${owner}', expected '999 700'"
    pg_nodes="$(running_on "${DEV_STACK}_postgres")"
    [[ "$pg_nodes" == "$DB_WORKER" ]] || fail "dev postgres runs on '${pg_nodes}', expected ${DB_WORKER}"
    [[ "$(running_on "${DEV_STACK}_nginx-proxy")" == "$MANAGER" ]] || fail "dev proxy is not on the edge node ${MANAGER}"
    [[ "$(running_on "${PROD_STACK}_nginx-proxy")" == "$MANAGER" ]] || fail "prod proxy is not on the edge node ${MANAGER}"
    [[ "$(running_on "${DEV_STACK}_edge")" == "$MANAGER" ]] || fail "dev edge is not on the edge node ${MANAGER}"
    [[ "$(running_on "${PROD_STACK}_edge")" == "$MANAGER" ]] || fail "prod edge is not on the edge node ${MANAGER}"
    [[ "$(curl -sS -m 10 -f "$(env_url dev)/api/service/version" | json version)" == "$TAG" ]] \
        || fail "dev does not answer version ${TAG}"
    # A write through the proxy on the manager, the backend, to the database on the worker.
    curl -sS -m 10 -f -H 'content-type: application/json' --data '{"message":"multinode first deploy"}' \
        "$(env_url dev)/api/log" >/dev/null || fail "dev cannot store a log entry"
    tasks_pulled "$DEV_STACK" 1
}

# On several nodes a deploy whose services could not be placed stops before anything changes:
# no edge node that takes tasks, a database node that takes none (paused: its running tasks
# stay, as a label removal would not let them).
test_deploy_refuses_unplaceable_stack() {
    local before
    before="$(all_running_tasks "$DEV_STACK"; all_running_tasks "$PROD_STACK")"
    refused_while_paused "$(docker info --format '{{.Swarm.NodeID}}')" "the only edge node" \
        "no node labelled stackship.edge=true is ready and active (${MANAGER}: ready, pause"
    refused_while_paused "$(docker node inspect "$DB_WORKER" --format '{{.ID}}')" "the database node" \
        "database node (label stackship.postgres.dev) is not ready and active (${DB_WORKER}: ready, pause)"
    [[ "$(all_running_tasks "$DEV_STACK"; all_running_tasks "$PROD_STACK")" == "$before" ]] \
        || fail "a refused deploy changed running tasks"
}

# refused_while_paused NODE WHAT ERROR: with NODE paused, a dev deploy fails saying ERROR.
refused_while_paused() {
    local out="$WORK/refuse.out" rc=0
    docker node update --availability pause "$1" >/dev/null
    deploy_dev > "$out" 2>&1 || rc=$?
    docker node update --availability active "$1" >/dev/null
    ((rc != 0)) || fail "stackship deploy exited 0 with $2 paused"
    grep -qF "$3" "$out" || fail "no clear error with $2 paused: $(tail -n 3 "$out")"
}

dev_lists() { curl -sS -m 5 -f "$(env_url dev)/api/logs?limit=200" | grep -qF "$1"; }

# The database label moved to a node without the data: Swarm stops Postgres at once (the
# label is a constraint), and the deploy refuses to start an empty database there; with the
# label back, Postgres runs on its data again.
test_moved_database_label_is_refused() {
    local other="${STACKSHIP_PROJECT}-node-2" out="$WORK/moved.out" rc=0
    move_label stackship.postgres.dev "$(docker node inspect "$other" --format '{{.ID}}')"
    deploy_dev > "$out" 2>&1 || rc=$?
    move_label stackship.postgres.dev "$(docker node inspect "$DB_WORKER" --format '{{.ID}}')"
    ((rc != 0)) || fail "stackship deploy exited 0 with the database label on a node without the data"
    grep -q "there is no database in /data/${STACKSHIP_PROJECT}/data/dev/postgres on node ${other}" "$out" \
        || fail "no clear error for the moved label: $(tail -n 3 "$out")"
    if docker exec "$other" test -e "/data/${STACKSHIP_PROJECT}/data/dev/postgres"; then
        fail "the refused deploy created a data directory on ${other}"
    fi
    wait_until 120 "dev postgres back on ${DB_WORKER}" converged "${DEV_STACK}_postgres" 1 "$other"
    [[ "$(running_on "${DEV_STACK}_postgres")" == "$DB_WORKER" ]] || fail "dev postgres is not back on ${DB_WORKER}"
    wait_until 60 "dev to list the row of the first deploy" dev_lists "multinode first deploy"
}

# An update: prod's backend to a new image; the replicas spread over the zones (one per node
# here), each new task pulled on the worker that runs it.
test_update_spreads_backend() {
    local next out="$WORK/update.out" nodes rc=0 svc
    next="$(push_variant mn 'LABEL org.stackship.test=multinode')"
    printf '%s\n' "$next" > "$WORK/prod-tag"
    deploy_prod BACKEND_TAG="$next" > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "the prod update on three nodes failed (exit ${rc}): $(tail -n 20 "$out")"
    # The variant is the same binary (same version) in a new image: the spec and tasks tell.
    [[ "$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" == *"/backend:${next}@"* ]] \
        || fail "prod backend spec is not on ${next}"
    [[ "$(prod_version)" == "$TAG" ]] || fail "prod does not answer after the update"
    nodes="$(running_on "${PROD_STACK}_backend")"
    [[ "$(sort -u <<<"$nodes" | grep -c .)" -eq 2 ]] || fail "prod backend replicas are not on two nodes: $(tr '\n' ' ' <<<"$nodes")"
    grep -qvxF "$MANAGER" <<<"$nodes" || fail "no prod backend replica runs on a worker"
    for svc in backend frontend; do
        [[ "$(docker service inspect "${PROD_STACK}_${svc}" --format '{{range .Spec.TaskTemplate.Placement.Preferences}}{{.Spread.SpreadDescriptor}}{{end}}')" == node.labels.stackship.zone ]] \
            || fail "prod ${svc} does not spread over node.labels.stackship.zone"
    done
    log "prod backend on: $(tr '\n' ' ' <<<"$nodes")"
    tasks_pulled "$PROD_STACK" 1
}

# Pulls after the deploy (the drain before left a worker without a backend task): the credentials the deploy stored in the service spec (the deploy
# token's; the engine's own login is gone, as when the deploy job has ended) pull the image
# on a worker that never had it. Control: a service created with a token that expired
# afterwards (a CI job token) cannot pull there.
test_rescheduled_tasks_pull_with_deploy_credentials() {
    local target image repo_tag node job="job-token-$$" job_pw svc="${STACKSHIP_PROJECT}-mn-jobtoken-$$" state htpasswd
    htpasswd="${STACKSHIP_REGISTRY_DIR}/htpasswd"
    image="$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')"
    repo_tag="${image%@*}"
    # The worker without a prod backend task.
    for node in $(docker node ls --filter role=worker --format '{{.Hostname}}'); do
        running_on "${PROD_STACK}_backend" | grep -qxF "$node" || target="$node"
    done
    [[ -n "${target:-}" ]] || fail "every worker runs a prod backend task"
    docker exec "$target" sh -c "docker image ls -q '${repo_tag%:*}' | xargs -r docker image rm -f" >/dev/null 2>&1 || true
    ! docker exec "$target" docker image ls --digests --format '{{.Digest}}' | grep -qxF "${image##*@}" \
        || fail "could not remove ${image} from ${target}"
    # Without credentials the worker cannot pull at all (so the pull below uses the spec's).
    if docker exec "$target" docker pull -q "$image" >/dev/null 2>&1; then fail "${target} pulls ${image} without credentials"; fi
    docker logout "${STACKSHIP_REGISTRY_ADDR}" >/dev/null
    # Control: a token valid when the service was created, expired before its task is placed.
    job_pw="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    htpasswd -Bbn "$job" "$job_pw" >> "$htpasswd"
    printf '%s' "$job_pw" | docker login -u "$job" --password-stdin "${STACKSHIP_REGISTRY_ADDR}" >/dev/null 2>&1 \
        || fail "login as ${job} failed"
    docker service create --detach --quiet --with-registry-auth --name "$svc" --replicas 0 \
        --restart-condition none --constraint "node.hostname==${target}" "$image" /app/backend --version >/dev/null \
        || fail "cannot create ${svc}"
    docker logout "${STACKSHIP_REGISTRY_ADDR}" >/dev/null
    sed -i "/^${job}:/d" "$htpasswd"
    docker service scale --detach "${svc}=1" >/dev/null
    wait_until 60 "the job-token task to end" bash -c "docker service ps '$svc' --format '{{.CurrentState}}' | grep -qE '^(Rejected|Failed|Complete)'"
    state="$(docker service ps "$svc" --no-trunc --format '{{.CurrentState}} {{.Error}}' | head -n 1)"
    docker service rm "$svc" >/dev/null
    [[ "$state" == Rejected* ]] || { registry_login_back; fail "with an expired token the task on ${target} was not rejected: ${state}"; }
    log "control, expired token: ${state}"
    # The deploy's credentials: a third replica goes to the zone without one, ${target}.
    docker service scale --detach "${PROD_STACK}_backend=3" >/dev/null
    if ! wait_until_ok 120 converged "${PROD_STACK}_backend" 3; then
        state="$(docker service ps "${PROD_STACK}_backend" --no-trunc --format '{{.Node}} {{.CurrentState}} {{.Error}}' | head -n 4)"
        docker service scale --detach "${PROD_STACK}_backend=2" >/dev/null
        registry_login_back
        fail "the third backend replica did not start: ${state}"
    fi
    running_on "${PROD_STACK}_backend" | grep -qxF "$target" || { registry_login_back; fail "the third replica did not go to ${target}"; }
    docker exec "$target" docker image ls --digests --format '{{.Digest}}' | grep -qxF "${image##*@}" \
        || { registry_login_back; fail "${target} runs the task but has no ${image}"; }
    log "a backend task started on ${target} with the deploy's credentials, the engine logged out"
    registry_login_back
    docker service scale --detach "${PROD_STACK}_backend=2" >/dev/null
    wait_until 90 "prod backend back to 2 replicas" converged "${PROD_STACK}_backend" 2
}

# wait_until_ok TIMEOUT CMD...: like wait_until, but returns 1 instead of exiting.
wait_until_ok() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

registry_login_back() {
    registry_password | docker login --username "$STACKSHIP_REGISTRY_USER" --password-stdin "$STACKSHIP_REGISTRY_ADDR" >/dev/null 2>&1
}

# prod_backend_worker: a worker running a prod backend task, the database worker last.
prod_backend_worker() {
    local nodes node
    nodes="$(running_on "${PROD_STACK}_backend" | grep -vxF "$MANAGER" || true)"
    for node in $nodes; do
        [[ "$node" == "$DB_WORKER" ]] || { printf '%s\n' "$node"; return 0; }
    done
    [[ -n "$nodes" ]] || return 1
    head -n 1 <<<"$nodes"
}

drain_and_wait() {
    docker node update --availability drain "$1" >/dev/null
    wait_until 120 "prod backend to run 2 tasks off $1" converged "${PROD_STACK}_backend" 2 "$1"
    sleep 5
}

# Drain: the worker's backend task moves while requests flow through the proxy; none fails.
test_drain_moves_backend_without_failures() {
    local node report="$WORK/drain.json" failed
    node="$(prod_backend_worker)" || fail "no worker runs a prod backend task"
    log "draining ${node} under load"
    load_during "$report" drain_and_wait "$node" || { docker node update --availability active "$node" >/dev/null; fail "drain of ${node} failed"; }
    docker node update --availability active "$node" >/dev/null
    failed="$(load_failed "$report")"
    record drain_requests "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$report")"
    record drain_failed "$failed"
    log "drain of ${node}: $(load_summary "$report")"
    ((failed == 0)) || fail "${failed} requests failed while ${node} was drained: $(load_summary "$report")"
}

# kill_and_recover NODE: the node container killed; the time until prod's backend runs its two
# replicas elsewhere goes to WORK/recovery.
kill_and_recover() {
    local started=$SECONDS
    docker kill "$1" >/dev/null
    if ! wait_until_ok "$NODE_LOSS_BOUND_S" converged "${PROD_STACK}_backend" 2 "$1"; then
        echo "timeout" > "$WORK/recovery"
        return 0
    fi
    echo "$((SECONDS - started))" > "$WORK/recovery"
    sleep 5
}

# Node loss: a worker running a backend task dies; its tasks run elsewhere within the bound;
# the requests that failed meanwhile are counted; every acknowledged row is in the database.
test_node_loss_is_bounded_and_counted() {
    local node report="$WORK/loss.json" recovery lost
    node="$(prod_backend_worker)" || fail "no worker runs a prod backend task"
    log "killing node ${node} under load"
    load_during "$report" kill_and_recover "$node" || fail "the node loss run failed"
    recovery="$(cat "$WORK/recovery")"
    record node_loss_requests "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$report")"
    record node_loss_failed "$(load_failed "$report")"
    record node_loss_recovery_s "$recovery"
    log "loss of ${node}: backend replaced in ${recovery} s; $(load_summary "$report")"
    [[ "$recovery" != timeout ]] || fail "prod backend did not run 2 tasks off ${node} within ${NODE_LOSS_BOUND_S} s"
    lost="$(python3 - "$report" <(prod_psql "SELECT id || chr(9) || message FROM log_entries WHERE message LIKE '%e2e-$$%'") <<'PY'
import json, sys
acked = json.load(open(sys.argv[1]))["acked_rows"]
stored = {}
for line in open(sys.argv[2]):
    i, m = line.rstrip("\n").split("\t", 1)
    stored[int(i)] = m
print(sum(1 for i, m in acked if stored.get(i) != m), len(acked))
PY
)" || fail "cannot check the acknowledged rows"
    record rows_acked "${lost##* }"
    record rows_lost "${lost%% *}"
    log "acknowledged rows: ${lost##* }, lost: ${lost%% *}"
    ((${lost##* } > 0)) || fail "no rows were acknowledged during the node loss"
    ((${lost%% *} == 0)) || fail "${lost%% *} acknowledged rows are not in the database"
    # The node comes back (a new engine: it joins again and pulls what it runs).
    "$NODES" up 2 >/dev/null 2>&1 || fail "swarm-nodes.sh up 2 could not bring ${node} back"
}

# A rollback on several nodes: the failing task runs on the worker that has no backend task
# (the node just replaced), and the watcher reports it as on one node: the task's error and
# its log line, the rollback, the deploy's failure.
test_rollback_reported_on_multinode() {
    local bad out="$WORK/rollback.out" rc=0 where version="$TAG"
    # Variants are built FROM the image prod runs now (the update's).
    TAG="$(cat "$WORK/prod-tag")"
    bad="$(push_variant crash 'CMD ["/bin/sh", "-c", "echo fatal: cannot start >&2; exit 1"]')"
    deploy_prod BACKEND_TAG="$bad" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "stackship deploy exited 0 with a backend that exits 1 at start"
    where="$(docker service ps "${PROD_STACK}_backend" --format '{{.Image}} {{.Node}}' | awk -v t=":${bad}" 'index($1, t) { print $2 }' | sort -u)"
    log "the failing tasks ran on: $(tr '\n' ' ' <<<"$where")"
    [[ -n "$where" ]] || fail "no task of ${bad} was found"
    grep -qvxF "$MANAGER" <<<"$where" || fail "no failing task ran on a worker (on: ${where})"
    assert_rolled_back_to_tag "$out" "$version"
    grep -q "rolled back" "$out" || fail "the deploy output does not say the backend was rolled back"
    grep -q "non-zero exit (1)" "$out" || fail "the task error (non-zero exit (1)) is not in the deploy output"
    grep -q "fatal: cannot start" "$out" || fail "the failed task's log line is not in the deploy output"
}

write_results() {
    local f
    f="$WORK/figures"
    [[ -s "$f" ]] || return 0
    mkdir -p "$(dirname "$RESULTS")"
    {
        printf '# scripts/tests/test-multinode.sh: 1 manager + 2 worker nodes (containers, vfs), prod under\n'
        printf '# scripts/tests/loadgen.py (100 req/s through the proxy). %s, %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" \
            "$(git -C "$(repo_root)" describe --always --dirty 2>/dev/null || echo unknown)"
        printf '# node_loss_recovery_s: from the kill until prod backend runs 2 tasks elsewhere. The killed\n'
        printf '# worker ran a backend task, not prod'"'"'s database (on the manager): rows_lost counts rows the\n'
        printf '# backend acknowledged and the database does not have.\n'
        cat "$f"
    } > "$RESULTS"
    log "figures in ${RESULTS}"
}

# restore: dev's database back on the manager (its data directory there is untouched), the
# worker nodes gone, dev and prod deployed on the manager.
RESTORED=""
restore() {
    local rc=0
    [[ -z "$RESTORED" ]] || return 0
    RESTORED=1
    sed -i '/^job-token-/d' "${STACKSHIP_REGISTRY_DIR}/htpasswd" 2>/dev/null || true
    docker node update --availability active "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null 2>&1 || true
    docker node update --label-add stackship.edge=true "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null 2>&1 || true
    log "restoring: dev's database label on ${MANAGER}, nodes down, dev and prod redeployed"
    registry_login_back || true
    docker stack rm "$DEV_STACK" >/dev/null 2>&1 || true
    wait_until 120 "the dev stack to be removed" stack_gone "$DEV_STACK" || rc=1
    move_label stackship.postgres.dev "$(docker info --format '{{.Swarm.NodeID}}')"
    if [[ -z "$KEEP_NODES" ]]; then
        "$NODES" down >/dev/null 2>&1 || { warn "swarm-nodes.sh down failed"; rc=1; }
    fi
    if ! { copy_dev && deploy_dev; } >/dev/null 2>&1; then warn "redeploying dev failed"; rc=1; fi
    if ! copy_prod >/dev/null 2>&1 || ! deploy_prod BACKEND_TAG="$TAG" >/dev/null 2>&1; then
        warn "redeploying prod failed"
        rc=1
    fi
    return "$rc"
}

KEEP_NODES=""

# recreate_loopback_swarm: a swarm that scripts/up.sh made before it advertised the docker0
# address cannot be reached by test nodes, and Swarm cannot change the address: when it runs
# nothing but this project's stacks, it is re-created (down.sh --leave-swarm, up.sh --all).
recreate_loopback_swarm() {
    local addr others
    addr="$(docker info --format '{{.Swarm.NodeAddr}}')"
    [[ "$addr" == 127.* ]] || return 0
    others="$(docker service ls --format '{{.Name}}' | grep -v "^${STACKSHIP_PROJECT}-" || true)"
    [[ "$(docker node ls -q | wc -l)" -eq 1 ]] || die "this swarm advertises ${addr}, which test nodes cannot reach, and has other nodes: re-create it yourself (README, \"Test nodes on this machine\")"
    [[ -z "$others" ]] || die "this swarm advertises ${addr}, which test nodes cannot reach, and runs other services ($(paste -sd ' ' <<<"$others")): re-create it yourself (README, \"Test nodes on this machine\")"
    warn "this swarm advertises ${addr}, which test nodes cannot reach: re-creating it on $(swarm_local_addr) (scripts/down.sh --leave-swarm, scripts/up.sh --all)"
    "$(repo_root)/scripts/down.sh" --leave-swarm >&2 || die "scripts/down.sh --leave-swarm failed"
    "$(repo_root)/scripts/up.sh" --all >/dev/null || die "scripts/up.sh --all failed"
}

main() {
    local tests=() name started=$SECONDS
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --keep-nodes) KEEP_NODES=1 ;;
            --record) RESULTS="$RECORDED_RESULTS" ;;
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
    need htpasswd "apt-get install apache2-utils"
    recreate_loopback_swarm
    TAG="$(docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' 2>/dev/null \
        | sed -e 's/@sha256:.*//' -e 's/.*://' || true)"
    [[ -n "$TAG" ]] || die "no prod stack (run scripts/up.sh --all first)"
    [[ -d "${DEV_DIR}/current" ]] || die "no dev deploy directory (run scripts/up.sh --all first)"
    MANAGER="$(docker node inspect self --format '{{.Description.Hostname}}')"
    WORK="$(mktemp -d)"
    : > "$WORK/figures"
    printf '%s\n' "$TAG" > "$WORK/prod-tag"
    # Interrupted or not, the machine is left as it was found.
    trap 'restore || true; rm -rf "$WORK"' EXIT
    # Nodes an interrupted run left hold its state (dev's database directory): start anew.
    if [[ -n "$(docker ps -aq --filter "label=${STACKSHIP_PROJECT}.test-node")" ]]; then
        log "removing the test nodes an earlier run left"
        "$NODES" down >&2 || die "scripts/tests/swarm-nodes.sh down failed"
    fi
    log "starting two worker nodes"
    "$NODES" up 2 >&2 || die "scripts/tests/swarm-nodes.sh up 2 failed"
    log "testing tag ${TAG} on $(docker node ls -q | wc -l) nodes"
    for name in "${tests[@]}"; do
        run_test "$name"
        # Each step builds on the one before.
        ((FAILED == 0)) || break
    done
    write_results
    restore || { FAILED=$((FAILED + 1)); FAILED_NAMES+=(restore); }
    rm -rf "$WORK"
    log "finished in $((SECONDS - started))s${FAILED_NAMES[*]:+; failed: ${FAILED_NAMES[*]}}"
    harness_summary
}

main "$@"
