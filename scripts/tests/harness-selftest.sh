#!/usr/bin/env bash
# Checks the test harness itself (scripts/tests/harness.sh: run_test, check and the expect_
# helpers): every failing test prints why — its own fail message, or, when it dies without one,
# the command (with file and line) — a passing test passes, and the closing line counts both.
# Needs no Docker; scripts/test.sh runs it before the stack tests.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/tests/harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/harness-selftest.sh [--help]

Runs small tests through the harness and checks what it prints for each. run_test: a fail
message, a failed command substitution, a failing helper, a silent non-zero return, a closed
pipe under pipefail, a false arithmetic check, and a pass. check and expect_eq, expect_contains,
expect_absent, refused: a pass and a failure with its reason each. And the closing line.
USAGE
}

# The tests the harness runs (each called through run_test below).
helper_that_fails() { false; }
test_fails_with_message() { false || fail "a clear reason"; }
test_substitution_fails() { local x; x="$(printf partial; false)"; printf '%s\n' "$x"; }
test_helper_fails() { helper_that_fails; }
test_returns_silently() { return 3; }
test_closed_pipe() { seq 1 200000 | grep -q '^5$'; }
test_arithmetic_false() { local n=0; ((n > 1)); }
test_passes() { true; }
check_fails_with_message() { false || fail "a clear reason"; }

# expect NAME VERDICT PATTERN: run_test NAME prints VERDICT and a line matching PATTERN.
expect() {
    local name="$1" verdict="$2" pattern="$3" out
    out="$(run_test "$name" 2>&1)"
    grep -qx "${verdict} ${name} ([0-9]*s)" <<<"$out" || die "${name}: expected ${verdict}, got: ${out}"
    grep -qE -- "$pattern" <<<"$out" || die "${name}: no line matching '${pattern}' in: ${out}"
    printf 'ok %s\n' "$name"
}

# expect_line VERDICT NAME PATTERN CMD...: CMD, a harness call for the test NAME, prints
# "VERDICT NAME" and a line matching PATTERN.
expect_line() {
    local verdict="$1" name="$2" pattern="$3" out
    shift 3
    out="$("$@" 2>&1)"
    grep -qx "${verdict} ${name}" <<<"$out" || die "${name}: expected ${verdict}, got: ${out}"
    grep -qE -- "$pattern" <<<"$out" || die "${name}: no line matching '${pattern}' in: ${out}"
    printf 'ok %s\n' "$name"
}

main() {
    case "${1:-}" in -h | --help) usage; return 0 ;; "") ;; *) usage >&2; die "unknown argument '$1'" ;; esac
    local me="scripts/tests/harness-selftest.sh"
    expect fails_with_message FAIL '^    a clear reason$'
    expect substitution_fails FAIL "^    died at ${me}:[0-9]+ \\(exit 1\\): x=\"\\\$\\(printf partial; false\\)\"$"
    expect helper_fails FAIL "^    died at ${me}:[0-9]+ \\(exit 1\\): false$"
    expect returns_silently FAIL '^    the test returned 3 without saying why \(its last command: return 3\)$'
    # 141: seq killed by SIGPIPE (1 where the runner ignores SIGPIPE and seq sees EPIPE).
    expect closed_pipe FAIL "^    died at ${me}:[0-9]+ \\(exit (141|1)\\): grep -q"
    expect arithmetic_false FAIL "^    died at ${me}:[0-9]+ \\(exit 1\\): \\(\\(n > 1\\)\\)$"
    expect passes PASS '^PASS passes'
    # A fail message is the only line: the harness adds nothing after it.
    [[ "$(run_test fails_with_message 2>&1 | grep -c '^    ')" == 1 ]] || die "the harness repeated a fail message"

    expect_line PASS check-passes '^PASS check-passes$' check check-passes true
    expect_line FAIL check-command-fails '^    exit 1: grep -q absent /dev/null$' \
        check check-command-fails grep -q absent /dev/null
    expect_line FAIL check-says-why '^    a clear reason$' check check-says-why check_fails_with_message
    [[ "$(check check-says-why check_fails_with_message 2>&1 | grep -c '^    ')" == 1 ]] \
        || die "check repeated a fail message"
    expect_line PASS eq-same '^PASS eq-same$' expect_eq eq-same a a
    expect_line FAIL eq-differs '^    got:  b$' expect_eq eq-differs a b
    expect_line FAIL eq-differs '^    want: a$' expect_eq eq-differs a b
    expect_line PASS contains '^PASS contains$' expect_contains contains needle <(printf 'a needle\n')
    expect_line FAIL lacks ' does not contain: needle$' expect_contains lacks needle <(printf 'hay\n')
    expect_line PASS absent '^PASS absent$' expect_absent absent needle <(printf 'hay\n')
    expect_line FAIL present ' contains what it must not$' expect_absent present needle <(printf 'a needle\n')
    expect_line PASS refused '^PASS refused$' check refused refused false
    expect_line FAIL not-refused '^    it was not refused: true$' check not-refused refused true

    # The counts reach the closing line, which fails when a test failed.
    local out rc=0
    out="$(check one true; check two false 2>/dev/null; run_test passes >/dev/null 2>&1; harness_summary)" || rc=$?
    [[ "$(tail -n 1 <<<"$out")" == "2 passed, 1 failed" && "$rc" -ne 0 ]] \
        || die "closing line: expected '2 passed, 1 failed' and a failure, got '$(tail -n 1 <<<"$out")' (exit ${rc})"
    out="$(check one true; harness_summary)" || die "harness_summary failed with no failed test"
    printf 'ok closing line\n'
    log "harness self-test passed"
}

main "$@"
