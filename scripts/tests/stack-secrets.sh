# Stack tests of the secrets (sourced by scripts/tests/test-stack.sh, after scripts/tests/lib.sh):
# rotation under load, a rotation whose rollout fails, a release with a wrong secret, and a canary
# search for the secret values everywhere they must not be.
# shellcheck shell=bash

STACK_TESTS+=(db_password_rotates_under_load failed_rotation_restores_password
    killed_rotation_helper_leaves_no_stray wrong_secret_release_rolls_back
    secrets_do_not_leak)

# rotate_prod: stackship secret rotate prod db-password, from prod's release.
rotate_prod() { "${PROD_DIR}/current/stackship" secret rotate prod db-password; }

# maintenance_psql SQL: SQL as the backend role over the prod postgres container's socket, in
# the maintenance database (so it works while the application's database refuses connections).
maintenance_psql() {
    local pg
    pg="$(container_of "${PROD_STACK}_postgres")"
    [[ -n "$pg" ]] || fail "no running prod postgres container"
    docker exec "$pg" psql -U backend -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"
}

# next_password_secret NAME: the version after NAME (…-v3 -> …-v4).
next_password_secret() { printf '%s%s\n' "${1%-v*}-v" "$((${1##*-v} + 1))"; }

# assert_rotation_undone BEFORE OLD_PW OUT: the backend still mounts BEFORE, the database
# accepts OLD_PW, no newer version and no helper service is left, writes go on.
assert_rotation_undone() {
    local before="$1" old_pw="$2" out="$3" next
    next="$(next_password_secret "$before")"
    [[ "$(backend_password_secret)" == "$before" ]] || fail "the backend no longer mounts ${before}"
    if docker secret inspect "$next" >/dev/null 2>&1; then fail "the new secret ${next} was left behind"; fi
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper=secret)" ]] \
        || fail "a password helper service was left: $(docker service ls --filter label=stackship.ops-helper=secret --format '{{.Name}}')"
    password_works "$old_pw" || fail "the database no longer accepts the password the backend mounts"
    a_write_is_stored || fail "a write after the failed rotation failed"
    grep -qF "the database and the services are back on ${before}" "$out" \
        || fail "the output does not say both are back on ${before}: $(tail -n 8 "$out")"
}

# backend_password_secret: the db-password-v<N> secret prod's backend mounts.
backend_password_secret() {
    docker service inspect "${PROD_STACK}_backend" \
        --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{println .SecretName}}{{end}}' \
        | grep -E "^${PROD_STACK}-db-password-v[0-9]+$"
}

# mounted_password: the database password as prod's backend reads it (its secret file).
mounted_password() {
    local c
    c="$(container_of "${PROD_STACK}_backend")"
    [[ -n "$c" ]] || fail "no running prod backend container"
    docker exec "$c" cat /run/secrets/db_password
}

# password_works PASSWORD: the prod database accepts PASSWORD for the backend role over TCP
# (password authentication, not the socket's trust).
password_works() {
    local pg
    pg="$(container_of "${PROD_STACK}_postgres")"
    [[ -n "$pg" ]] || fail "no running prod postgres container"
    printf '%s' "$1" | docker exec -i "$pg" sh -c \
        'PGPASSWORD="$(cat)" psql -h 127.0.0.1 -U backend -d backend -Atqc "SELECT 1"' >/dev/null 2>&1
}

# a_write_is_stored: POST /api/log through the proxy answers 201 (a fresh DB round trip).
a_write_is_stored() {
    curl_env prod -f -X POST -H 'Content-Type: application/json' \
        --data "{\"message\":\"secrets e2e $(date -u +%s%N)\"}" https://localhost/api/log >/dev/null
}

test_db_password_rotates_under_load() {
    local before after pg_before report old_pw new_pw out
    report="$(mktemp)" out="$(mktemp)"
    before="$(backend_password_secret)" || fail "prod's backend mounts no db-password-v<N>"
    old_pw="$(mounted_password)"
    pg_before="$(running_tasks "${PROD_STACK}_postgres")"
    load_during "$report" rotate_prod > "$out" 2>&1 \
        || fail "stackship secret rotate failed: $(tail -n 20 "$out")"
    log "rotation under load: $(load_summary "$report")"
    after="$(backend_password_secret)" || fail "after the rotation the backend mounts no db-password-v<N>"
    [[ "${after##*-v}" -eq $((${before##*-v} + 1)) ]] || fail "the backend moved from ${before} to ${after}, expected v$((${before##*-v} + 1))"
    if docker secret inspect "$before" >/dev/null 2>&1; then fail "the old secret ${before} was not removed"; fi
    [[ "$(running_tasks "${PROD_STACK}_postgres")" == "$pg_before" ]] || fail "postgres restarted during the rotation"
    new_pw="$(mounted_password)"
    [[ "$new_pw" != "$old_pw" && ${#new_pw} -eq 32 ]] || fail "the mounted password did not change to a new 32-character one"
    password_works "$new_pw" || fail "the database refuses the new password"
    if password_works "$old_pw"; then fail "the database still accepts the old password"; fi
    a_write_is_stored || fail "a write after the rotation failed"
    [[ "$(load_failed "$report")" -eq 0 ]] || fail "requests failed during the rotation: $(load_summary "$report")"
    if grep -qF "$new_pw" "$out" || grep -qF "$old_pw" "$out"; then fail "a password appears in the rotation's output"; fi
    "${PROD_DIR}/current/stackship" history prod | sed -n 2p | grep -qF "rotated db-password: ${before} -> ${after}" \
        || fail "the last record does not say it was a rotation: $("${PROD_DIR}/current/stackship" history prod | head -n 3)"
    rm -f "$report" "$report.log" "$out"
}

test_failed_rotation_restores_password() {
    local before out rc=0 old_pw
    out="$(mktemp)"
    before="$(backend_password_secret)" || fail "prod's backend mounts no db-password-v<N>"
    old_pw="$(mounted_password)"
    # The rollout onto the new secret fails: the application's database refuses new connections
    # (the running tasks keep theirs), so the new backend task never turns ready and Swarm rolls
    # it back. The password helper works in the maintenance database.
    maintenance_psql "ALTER DATABASE backend ALLOW_CONNECTIONS false" >/dev/null
    rotate_prod > "$out" 2>&1 || rc=$?
    maintenance_psql "ALTER DATABASE backend ALLOW_CONNECTIONS true" >/dev/null
    ((rc == 1)) || fail "stackship secret rotate exited ${rc}, expected 1 (the rollout failed, rolled back): $(tail -n 8 "$out")"
    grep -q "rotation failed: the rollout onto" "$out" || fail "the output does not say the rollout failed: $(tail -n 8 "$out")"
    assert_rotation_undone "$before" "$old_pw" "$out"
    rm -f "$out"
}

test_killed_rotation_helper_leaves_no_stray() {
    local before out rc=0 old_pw holder pid helper="" deadline
    out="$(mktemp)"
    before="$(backend_password_secret)" || fail "prod's backend mounts no db-password-v<N>"
    old_pw="$(mounted_password)"
    # A transaction holds the role's row: the helper's ALTER ROLE waits behind it until the
    # test kills the helper's container.
    maintenance_psql "BEGIN; ALTER ROLE backend VALID UNTIL 'infinity'; SELECT pg_sleep(20); ROLLBACK;" >/dev/null 2>&1 &
    holder=$!
    # Started directly (not through a function), so $! is stackship's own pid, which names its helper.
    "${PROD_DIR}/current/stackship" secret rotate prod db-password > "$out" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 60))
    while [[ -z "$helper" ]] && ((SECONDS < deadline)); do
        helper="$(docker ps -q --filter "label=com.docker.swarm.service.name=${PROD_STACK}-ops-secret-${pid}" --filter status=running)"
        [[ -n "$helper" ]] || sleep 0.5
    done
    [[ -n "$helper" ]] || { wait "$holder" || true; wait "$pid" || true; fail "the password helper never ran: $(tail -n 8 "$out")"; }
    docker kill "$helper" >/dev/null
    wait "$pid" || rc=$?
    wait "$holder" || true
    ((rc == 1)) || fail "stackship secret rotate exited ${rc} after its helper was killed, expected 1: $(tail -n 8 "$out")"
    grep -q "the password was not changed as planned" "$out" || fail "the output does not say the helper failed: $(tail -n 8 "$out")"
    assert_rotation_undone "$before" "$old_pw" "$out"
    rm -f "$out"
}

test_wrong_secret_release_rolls_back() {
    local before bad out rc=0
    out="$(mktemp)"
    before="$(backend_password_secret)" || fail "prod's backend mounts no db-password-v<N>"
    # A newer version of the password secret whose content the database does not know: the next
    # deploy picks it up, its backend cannot log in, Swarm rolls it back.
    bad="${PROD_STACK}-db-password-v$((${before##*-v} + 1))"
    head -c 24 /dev/urandom | base64 | docker secret create "$bad" - >/dev/null || fail "cannot create ${bad}"
    deploy_prod > "$out" 2>&1 || rc=$?
    docker secret rm "$bad" >/dev/null 2>&1 || true
    ((rc != 0)) || fail "stackship deploy exited 0 with a password secret the database refuses"
    grep -q "database password: ${bad}" "$out" || fail "the deploy did not pick the newest secret ${bad}"
    assert_rolled_back_to_tag "$out"
    grep -q "password authentication failed" "$out" || fail "the deploy output does not say why (password authentication failed)"
    [[ "$(backend_password_secret)" == "$before" ]] || fail "the backend is not back on ${before}"
    a_write_is_stored || fail "the old release does not keep writing"
    rm -f "$out"
    restore_prod >/dev/null 2>&1 || fail "restoring prod failed"
}

# leak_hits DESCRIPTION: reads text on stdin and reports every canary found in it, counting
# them in LEAKS (call it as `leak_hits D < <(CMD)`, not in a pipeline: the count must survive).
leak_hits() {
    local what="$1" text canary
    text="$(cat)"
    for canary in "${CANARIES[@]}"; do
        if grep -qF -- "$canary" <<<"$text"; then
            printf '    a secret value (%s...) appears in %s\n' "${canary:0:4}" "$what" >&2
            LEAKS=$((LEAKS + 1))
        fi
    done
}

test_secrets_do_not_leak() {
    local out stack svc c pid image images=() key_line files
    out="$(mktemp)"
    # Canaries: a freshly rotated database password (unique, random) and a line from the middle
    # of the TLS key's PEM body.
    rotate_prod > "$out" 2>&1 || fail "rotation failed: $(tail -n 10 "$out")"
    key_line="$(sed -n 3p "${PROD_DIR}/secrets/tls.key")"
    [[ ${#key_line} -ge 20 ]] || fail "no key line to use as a canary"
    CANARIES=("$(mounted_password)" "$key_line")
    [[ ${#CANARIES[0]} -eq 32 ]] || fail "no password canary"
    LEAKS=0
    leak_hits "the rotation's output" < "$out"
    deploy_prod > "$out" 2>&1 || fail "deploy failed"
    leak_hits "stackship deploy's output" < "$out"
    for stack in "$PROD_STACK" "$DEV_STACK"; do
        for svc in $(docker stack services "$stack" --format '{{.Name}}'); do
            leak_hits "docker service inspect ${svc}" < <(docker service inspect "$svc")
            images+=("$(docker service inspect "$svc" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')")
        done
        for c in $(docker ps -aq --filter "label=com.docker.stack.namespace=${stack}"); do
            leak_hits "docker inspect of container ${c}" < <(docker inspect "$c")
            # Every task's log, the exited ones' too (`docker service logs` can hang on a task
            # whose container is gone; the containers hold the same json-file logs).
            leak_hits "the log of container ${c}" < <(docker logs "$c" 2>&1)
            # Swarm's task-history reaper may remove an old task's container meanwhile.
            pid="$(docker inspect "$c" --format '{{.State.Pid}}' 2>/dev/null)" || continue
            if [[ "$pid" != 0 && -r "/proc/${pid}/environ" ]]; then
                leak_hits "the environment of container ${c}" < <(tr '\0' '\n' < "/proc/${pid}/environ")
            fi
        done
    done
    for image in $(printf '%s\n' "${images[@]}" | sort -u); do
        leak_hits "the history of ${image}" < <(docker history --no-trunc "$image" 2>&1)
        leak_hits "docker image inspect ${image}" < <(docker image inspect "$image" 2>&1)
    done
    # The deploy directories (except the secret source files themselves), the git history and
    # the working tree: the names of files holding a canary.
    printf '%s\n' "${CANARIES[@]}" > "$out.canaries"
    files="$(grep -rlF -f "$out.canaries" "$STACKSHIP_DEPLOY_ROOT" --exclude-dir=secrets 2>/dev/null || true)"
    files+="$(git -C "$(repo_root)" rev-list --all | xargs git -C "$(repo_root)" grep -lF -f "$out.canaries" 2>/dev/null || true)"
    files+="$(grep -rlF -f "$out.canaries" "$(repo_root)" --exclude-dir=target --exclude-dir=.git 2>/dev/null || true)"
    if [[ -n "$files" ]]; then
        printf '    a secret value appears in: %s\n' "$files" >&2
        LEAKS=$((LEAKS + 1))
    fi
    rm -f "$out.canaries"
    # Every mounted secret file belongs to the user its container runs as, mode 0400.
    for stack in "$PROD_STACK" "$DEV_STACK"; do
        for c in $(docker ps -q --filter "label=com.docker.stack.namespace=${stack}"); do
            pid="$(docker inspect "$c" --format '{{.State.Pid}}' 2>/dev/null)" || continue
            [[ "$pid" != 0 && -r "/proc/${pid}/status" ]] || continue
            local uid file
            uid="$(awk '/^Uid:/ { print $2 }' "/proc/${pid}/status")"
            for file in "/proc/${pid}/root/run/secrets/"*; do
                [[ -e "$file" ]] || continue
                [[ "$(stat -L -c '%u %a' "$file")" == "${uid} 400" ]] \
                    || fail "$(docker inspect "$c" --format '{{.Name}}'): ${file##*/} is $(stat -L -c 'uid %u mode %a' "$file"), expected uid ${uid} mode 400"
            done
        done
    done
    # Control: the same search finds the password where it must be (the backend's secret file).
    LEAKS_BEFORE_CONTROL=$LEAKS
    leak_hits "(control) the backend's secret file" < <(mounted_password) 2>/dev/null
    ((LEAKS == LEAKS_BEFORE_CONTROL + 1)) || fail "the control search did not find the password in its own secret file"
    ((LEAKS_BEFORE_CONTROL == 0)) || fail "${LEAKS_BEFORE_CONTROL} leak(s) of secret values (see above)"
    rm -f "$out"
}
