# shellcheck shell=bash
# The PASS/FAIL harness of every test script (scripts/tests/test-*.sh and the end-to-end modules
# they source). Source it after scripts/lib.sh; it defines functions and counters and runs nothing.
#
# A test has a name and ends in one line, PASS NAME or FAIL NAME; harness_summary closes the run
# with "N passed, M failed" and fails when any test failed.
#   run_test NAME          the function test_NAME is the test (its line ends with the duration)
#   check NAME CMD...      the command is the test: it passes when CMD succeeds
#   expect_eq NAME WANT GOT, expect_contains NAME TEXT FILE, expect_absent NAME TEXT FILE
#   check NAME refused CMD...   passes when CMD fails (something that must be refused)
# Every test runs in a subshell with errexit: its first failed command ends it, never the run.
# Inside a test, fail MESSAGE says why it fails and returns 1; a test that fails without saying
# why gets its failed command (with file and line) printed instead. Either way the reason comes
# first, indented on stderr, then the FAIL line.

PASSED=0
FAILED=0
FAILED_NAMES=()

# fail MESSAGE: says why the running test fails (stderr) and returns 1; the harness then adds
# nothing.
fail() {
    printf '    %s\n' "$*" >&2
    TEST_SAID_WHY=1
    return 1
}

# test_died: the ERR trap of a running test. A check that fails without calling fail (a command
# substitution under set -e, a helper's non-zero exit, the checked command itself) still says
# which command, where and how.
test_died() {
    local rc="$1" line="$2" src="$3" cmd="$4" func="$5"
    # Only in the test's own shell (a failure inside $(...) is reported where it lands) and
    # only when fail did not already say why.
    ((BASH_SUBSHELL == TEST_SUBSHELL)) || return 0
    [[ -z "${TEST_SAID_WHY:-}" ]] || return 0
    if [[ "$func" == harness_run ]] && declare -F "${TEST_COMMAND[0]}" >/dev/null; then
        printf '    the test returned %s without saying why (its last command: %s)\n' "$rc" "$cmd" >&2
    elif [[ "$func" == harness_run ]]; then
        printf '    exit %s: %s\n' "$rc" "${TEST_COMMAND[*]}" >&2
    else
        printf '    died at %s:%s (exit %s): %s\n' "${src#"$(repo_root)/"}" "$line" "$rc" "$cmd" >&2
    fi
    TEST_SAID_WHY=1
}

# harness_run NAME TIMED CMD...: runs CMD as the test NAME and counts it; TIMED=1 adds the
# duration to the PASS/FAIL line.
harness_run() {
    local name="$1" timed="$2" started=$SECONDS rc took=""
    shift 2
    # A subshell with errexit: the first failed command ends the test (not the run).
    set +e
    (
        set -Eeuo pipefail
        TEST_SUBSHELL=$BASH_SUBSHELL TEST_SAID_WHY="" TEST_COMMAND=("$@")
        trap 'test_died "$?" "$LINENO" "${BASH_SOURCE[0]}" "$BASH_COMMAND" "${FUNCNAME[0]:-}"' ERR
        "$@"
    )
    rc=$?
    set -e
    ((timed)) && took=" ($((SECONDS - started))s)"
    if ((rc == 0)); then
        printf 'PASS %s%s\n' "$name" "$took"
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL %s%s\n' "$name" "$took"
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
    fi
}

# run_test NAME: runs the function test_NAME as the test NAME.
run_test() {
    log "running $1"
    harness_run "$1" 1 "test_$1"
}

# check NAME CMD...: the test NAME passes when CMD succeeds.
check() {
    local name="$1"
    shift
    harness_run "$name" 0 "$@"
}

# refused CMD...: succeeds when CMD fails (its output dropped), for checks that something is
# refused.
refused() {
    if "$@" >/dev/null 2>&1; then
        fail "it was not refused: $*"
    fi
}

# expect_eq NAME WANT GOT
expect_eq() { check "$1" harness_equal "$2" "$3"; }
harness_equal() {
    [[ "$1" == "$2" ]] && return 0
    printf '    want: %s\n' "$1" >&2
    fail "got:  $2"
}

# expect_contains NAME TEXT FILE
expect_contains() { check "$1" harness_contains "$2" "$3"; }
harness_contains() { grep -qF -- "$1" "$2" || fail "$2 does not contain: $1"; }

# expect_absent NAME TEXT FILE
expect_absent() { check "$1" harness_absent "$2" "$3"; }
harness_absent() { ! grep -qF -- "$1" "$2" || fail "$2 contains what it must not"; }

# harness_summary: the closing line, "N passed, M failed"; fails when any test failed.
harness_summary() {
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    ((FAILED == 0))
}
