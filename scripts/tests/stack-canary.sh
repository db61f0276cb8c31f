# Stack tests of the canary gate (sourced by scripts/tests/test-stack.sh, after scripts/tests/lib.sh):
# two releases that pass every healthcheck and fail real requests are rolled back by the gate
# under load. (A good release passing it under the same load, and a rollout without traffic
# reported as too little to judge: test_config_change_rolls_backend_only in test-stack.sh.)
# shellcheck shell=bash

STACK_TESTS+=(canary_gate_judges_releases_on_real_traffic)

# canary_deploy OUT REPORT AFTER_REPORT [VAR=VALUE...]: deploys prod under load (output to OUT,
# the load's report to REPORT), then sends 5 s of the same load (report to AFTER_REPORT); returns
# the deploy's status.
canary_deploy() {
    local out="$1" report="$2" after="$3" rc=0
    shift 3
    load_during "$report" deploy_prod "$@" > "$out" 2>&1 || rc=$?
    python3 "$(repo_root)/scripts/tests/loadgen.py" --url https://localhost --cacert "$STACKSHIP_PROD_CERT" \
        --rate 100 --min-requests 500 --max-seconds 5 --run "canary-after-$$" --out "$after" \
        > "${after}.log" 2>&1 || fail "the load after the deploy failed to run: $(tail -n 3 "${after}.log")"
    return "$rc"
}

# assert_canary_rolled_back NAME OUT REPORT AFTER_REPORT ROUTE_STATUS: the deploy failed on the
# canary's verdict naming ROUTE_STATUS (e.g. "POST /api/log answered 5"), Swarm rolled the
# backend back to TAG, some requests failed while the canary served, none after.
assert_canary_rolled_back() {
    local name="$1" out="$2" report="$3" after="$4" route="$5"
    grep -q "backend: canary failed real requests: new version [0-9]* of [0-9]* failed" "$out" \
        || fail "${name}: the deploy does not say the canary failed real requests: $(grep canary "$out" | tail -n 5)"
    grep -q "most failed: ${route}" "$out" || fail "${name}: the verdict does not name ${route}: $(grep 'canary failed' "$out")"
    grep -q "canary backend: rolling it back" "$out" || fail "${name}: the gate did not roll the backend back"
    assert_rolled_back_to_tag "$out"
    log "${name}: during the deploy $(load_summary "$report"); after it $(load_summary "$after"); $(grep -o 'canary failed real requests.*' "$out")"
    [[ "$(load_failed "$after")" -eq 0 ]] || fail "${name}: requests failed after the rollback: $(load_summary "$after")"
    (("$(load_failed "$report")" > 0)) || fail "${name}: no request failed while the broken canary served: was it judged on traffic at all?"
}

test_canary_gate_judges_releases_on_real_traffic() {
    local out report after rc bad
    out="$(mktemp)" report="$(mktemp)" after="$(mktemp)"

    # 1. A configuration whose request deadline (1 ms) no database request meets: reads and
    #    writes answer 504, while /api/service/health (no database) passes every healthcheck.
    copy_prod || fail "copy step failed"
    sed -i 's/^request_timeout_ms = .*/request_timeout_ms = 1/' "$(prod_config)"
    grep -q '^request_timeout_ms = 1$' "$(prod_config)" || fail "could not set request_timeout_ms"
    rc=0
    canary_deploy "$out" "$report" "$after" || rc=$?
    ((rc == 1)) || fail "the deploy of a release answering 504 exited ${rc}, expected 1: $(tail -n 15 "$out")"
    assert_canary_rolled_back timeout "$out" "$report" "$after" "GET /api/logs answered 504\|POST /api/log answered 504"

    # 2. An image whose database sessions run as a role that may read and not write: reads and
    #    healthchecks pass, every write fails (Postgres: permission denied for table log_entries).
    canary_reader_role create || fail "could not create the reader role"
    bad="$(push_variant readonly "ENV PGOPTIONS=\"-c role=${CANARY_READER}\"")"
    rc=0
    copy_prod || fail "copy step failed"
    canary_deploy "$out" "$report" "$after" BACKEND_TAG="$bad" || rc=$?
    canary_reader_role drop || fail "could not drop the reader role"
    ((rc == 1)) || fail "the deploy of a release whose writes fail exited ${rc}, expected 1: $(tail -n 15 "$out")"
    assert_canary_rolled_back readonly "$out" "$report" "$after" "POST /api/log answered 5"
    # Why, in the database's words: the canary's own log lines, shown by the deploy.
    grep -q "permission denied for table log_entries" "$out" \
        || fail "the deploy does not show the canary's error (permission denied for table log_entries): $(grep -A6 'last lines task' "$out")"

    # Both were rolled back: prod runs what it ran before. The release directory goes back to
    # this checkout's files. (A good release under load passing the gate, and a rollout without
    # traffic said too little to judge: test_config_change_rolls_backend_only.)
    copy_prod || fail "copy step failed"
    rm -f "$out" "$report" "$report.log" "$after" "$after.log"
}
