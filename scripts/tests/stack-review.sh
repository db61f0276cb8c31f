# Stack tests of review stacks (sourced by scripts/tests/test-stack.sh, after scripts/tests/lib.sh):
# two merge requests' stacks side by side with dev and prod, deployed the way the review-deploy
# job does it on the manager (remote-deploy.sh --review from an upload directory, settings on
# stdin), each answering its own version on its own port and reaching only its own database;
# then `stackship review stop` removes everything one of them made, leaves the other serving,
# succeeds again on nothing, and the last one goes too.
# shellcheck shell=bash

STACK_TESTS+=(review_stacks_side_by_side review_stop_removes_everything)

REVIEW_IIDS=(901 902)
REVIEW_STATE="${ARTIFACTS}/review"

review_stack() { printf '%s-review-%s\n' "$STACKSHIP_PROJECT" "$1"; }
review_url() { printf 'http://127.0.0.1:%s\n' "$((20000 + $1))"; }

# swarm_objects: one "kind name" line per service, network, config, secret and volume.
swarm_objects() {
    local kind
    for kind in service network config secret volume; do
        docker "$kind" ls --format '{{.Name}}' | sed "s/^/${kind} /"
    done | LC_ALL=C sort
}

# review_deploy IID BACKEND_TAG: what review-deploy does on the manager: the dev release plus the
# review stack file in <root>/review/IID/.incoming-*/, remote-deploy.sh --review IID with the
# job's settings on stdin (the tag as "built by this pipeline").
review_deploy() {
    local iid="$1" tag="$2" root dir stage incoming rc=0
    root="$(repo_root)"
    dir="${STACKSHIP_DEPLOY_ROOT}/review/${iid}"
    mkdir -p "$dir"
    stage="$(mktemp -d)"
    "$root/scripts/ci/copy-manifests.sh" --dev --dest "$stage" \
        --bin-dir "$(tools_dir)" >/dev/null 2>&1 || fail "staging the review release failed"
    incoming="${dir}/.incoming-e2e-$$"
    mkdir -p "$incoming"
    mv "$stage/current" "$incoming/current"
    rm -rf "$stage"
    install -m 0644 "$root/docker-compose.review.yaml" "$incoming/current/"
    install -m 0755 "$root/scripts/ci/remote-deploy.sh" "$incoming/remote-deploy.sh"
    printf 'REGISTRY=%s\nREGISTRY_USER=%s\nREGISTRY_PASSWORD=%s\nBACKEND_TAG=%s\n' \
        "$STACKSHIP_REGISTRY_ADDR" "$STACKSHIP_REGISTRY_USER" "$(registry_password)" "$tag" \
        | "$incoming/remote-deploy.sh" --review "$iid" > "${REVIEW_STATE}/rollout-${iid}.json" \
            2> "${REVIEW_STATE}/deploy-${iid}.log" || rc=$?
    [[ "$rc" -eq 0 ]] || fail "review deploy ${iid} failed (exit ${rc}): $(tail -n 15 "${REVIEW_STATE}/deploy-${iid}.log")"
}

# review_stop IID: `stackship review stop IID` as the review-stop job runs it (the build's
# stackship, not the stack's release); its output in stop-IID.log.
review_stop() {
    "$(tools_dir)/stackship" --root "$STACKSHIP_DEPLOY_ROOT" \
        review stop "$1" 2> "${REVIEW_STATE}/stop-$1.log"
}

review_version() { curl -sS -m 10 -f "$(review_url "$1")/api/service/version" | json version; }

# review_reaches IID PG_STACK: IID's backend speaks to PG_STACK's Postgres, by every address it has.
review_reaches() {
    local backend pid ip ips
    backend="$(container_of "$(review_stack "$1")_backend")"
    [[ -n "$backend" ]] || fail "no running backend in $(review_stack "$1")"
    pid="$(docker inspect "$backend" --format '{{.State.Pid}}')"
    ips="$(task_ips "${2}_postgres" "${2}_data")"
    [[ -n "$ips" ]] || fail "no postgres task IP of ${2}"
    for ip in $ips; do
        postgres_answers "$pid" "$ip" || return 1
    done
}

test_review_stacks_side_by_side() {
    local a="${REVIEW_IIDS[0]}" b="${REVIEW_IIDS[1]}" other iid s
    rm -rf "$REVIEW_STATE"
    mkdir -p "$REVIEW_STATE" "${STACKSHIP_DEPLOY_ROOT}/review"
    # Leftovers of an earlier run go first (and must go).
    for iid in "$a" "$b"; do review_stop "$iid" || fail "removing an earlier review stack ${iid} failed"; done
    other="$(next_backend_tag)" || fail "no second backend version"
    swarm_objects > "${REVIEW_STATE}/objects-0"
    review_deploy "$a" "$TAG"
    swarm_objects > "${REVIEW_STATE}/objects-1"
    review_deploy "$b" "$other"
    swarm_objects > "${REVIEW_STATE}/objects-2"
    # Each answers its own version on its own port, beside dev and prod.
    [[ "$(review_version "$a")" == "$TAG" ]] || fail "review ${a} answers '$(review_version "$a")', expected ${TAG}"
    [[ "$(review_version "$b")" == "$other" ]] || fail "review ${b} answers '$(review_version "$b")', expected ${other}"
    curl -sS -m 10 -f "$(env_url dev)/api/service/version" >/dev/null || fail "dev does not answer"
    curl_env prod -f https://localhost/api/service/version >/dev/null || fail "prod does not answer"
    # A write lands in the review stack's own database.
    curl -sS -m 10 -f -X POST -H 'Content-Type: application/json' --data '{"message":"review e2e"}' \
        "$(review_url "$a")/api/log" >/dev/null || fail "a write to review ${a} failed"
    # Databases: each backend reaches its own (control) and no one else's.
    review_reaches "$a" "$(review_stack "$a")" || fail "review ${a} cannot reach its own postgres (control)"
    review_reaches "$b" "$(review_stack "$b")" || fail "review ${b} cannot reach its own postgres (control)"
    for s in "$(review_stack "$b")" "$DEV_STACK" "$PROD_STACK"; do
        if review_reaches "$a" "$s"; then fail "review ${a} reaches the postgres of ${s}"; fi
    done
    for s in "$(review_stack "$a")" "$DEV_STACK" "$PROD_STACK"; do
        if review_reaches "$b" "$s"; then fail "review ${b} reaches the postgres of ${s}"; fi
    done
    # Own password secret, own volume, configs of its own (none shared with dev or the other).
    s="$(review_stack "$a")"
    [[ "$(docker service inspect "${s}_postgres" --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}')" \
        == "${s}-db-password-v1" ]] || fail "${s} postgres does not use ${s}-db-password-v1"
    docker volume inspect "${s}_pgdata" >/dev/null 2>&1 || fail "no volume ${s}_pgdata"
    ! docker service inspect "${s}_backend" --format '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{println .ConfigName}}{{end}}' \
        | grep -v '^$' | grep -qv "^${s}_" \
        || fail "${s} backend mounts a config not named after its stack"
    # Each deploy made every kind of object.
    local kind
    for kind in service network config secret volume; do
        LC_ALL=C comm -13 "${REVIEW_STATE}/objects-0" "${REVIEW_STATE}/objects-1" | grep -q "^${kind} " \
            || fail "the first review deploy made no ${kind}"
    done
}

test_review_stop_removes_everything() {
    local a="${REVIEW_IIDS[0]}" b="${REVIEW_IIDS[1]}" made gone left
    [[ -s "${REVIEW_STATE}/objects-2" ]] || fail "review_stacks_side_by_side did not leave its state"
    made="$(LC_ALL=C comm -13 "${REVIEW_STATE}/objects-0" "${REVIEW_STATE}/objects-1")"
    review_stop "$a" || fail "review-stop ${a} failed: $(tail -n 5 "${REVIEW_STATE}/stop-${a}.log")"
    swarm_objects > "${REVIEW_STATE}/objects-3"
    # Exactly what the first stack made is gone; everything else is as it was.
    gone="$(LC_ALL=C comm -23 "${REVIEW_STATE}/objects-2" "${REVIEW_STATE}/objects-3")"
    [[ "$gone" == "$made" ]] || fail "review-stop ${a} removed '${gone//$'\n'/, }', expected '${made//$'\n'/, }'"
    [[ -z "$(LC_ALL=C comm -13 "${REVIEW_STATE}/objects-2" "${REVIEW_STATE}/objects-3")" ]] || fail "new objects appeared"
    [[ ! -e "${STACKSHIP_DEPLOY_ROOT}/review/${a}" ]] || fail "the deploy directory of ${a} is still there"
    [[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$(review_stack "$a")")" ]] \
        || fail "containers of $(review_stack "$a") are left"
    # The other keeps serving, dev and prod too.
    [[ "$(review_version "$b")" != "" ]] || fail "review ${b} stopped answering"
    curl -sS -m 10 -f "$(env_url dev)/api/service/version" >/dev/null || fail "dev does not answer"
    curl_env prod -f https://localhost/api/service/version >/dev/null || fail "prod does not answer"
    # GitLab may run the stop job twice: nothing left is a success.
    review_stop "$a" || fail "a second review-stop ${a} failed"
    grep -q "nothing of $(review_stack "$a") is left" "${REVIEW_STATE}/stop-${a}.log" || fail "the second stop did not say nothing was left"
    # The last one goes too: the swarm is back to where it was before the review stacks.
    review_stop "$b" || fail "review-stop ${b} failed: $(tail -n 5 "${REVIEW_STATE}/stop-${b}.log")"
    swarm_objects > "${REVIEW_STATE}/objects-4"
    left="$(diff "${REVIEW_STATE}/objects-0" "${REVIEW_STATE}/objects-4" || true)"
    [[ -z "$left" ]] || fail "after both stops the swarm differs from before: ${left//$'\n'/ }"
}
