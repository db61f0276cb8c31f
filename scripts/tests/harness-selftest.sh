#!/usr/bin/env bash
# Checks the end-to-end harness itself (scripts/tests/lib.sh run_test): every failing test prints
# why — its own fail message, or, when it dies without one, the command, file and line — and a
# passing test passes. Needs no Docker; scripts/test.sh runs it before the stack tests.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/harness-selftest.sh [--help]

Runs small tests through the end-to-end harness (run_test) and checks what it prints for each:
a fail message, a failed command substitution, a failing helper, a silent non-zero return,
a closed pipe under pipefail, a false arithmetic check, and a pass.
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

# expect NAME VERDICT PATTERN: run_test NAME prints VERDICT and a line matching PATTERN.
expect() {
    local name="$1" verdict="$2" pattern="$3" out
    out="$(run_test "$name" 2>&1)"
    grep -qx "${verdict} ${name} ([0-9]*s)" <<<"$out" || die "${name}: expected ${verdict}, got: ${out}"
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
    log "harness self-test passed"
}

main "$@"
