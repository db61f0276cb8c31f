# shellcheck shell=bash
# The tools the pipeline tests use, installed into a cache outside the repository:
# gitlab-ci-local from npm and check-jsonschema from PyPI (in a venv). Source it after
# scripts/lib.sh; it defines functions and runs nothing.

# gitlab-ci-local 4.7x needs Node 22; 4.64.1 runs on Node 20 and validates against the schema.
GCL_VERSION="4.64.1"
CHECK_JSONSCHEMA_VERSION="0.39.0"
STACKSHIP_CACHE="${STACKSHIP_CACHE:-${STACKSHIP_DATA}/cache}"

# Checks of the pipeline tests: one PASS/FAIL line each, counted for the closing line.
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$*"; }

# check NAME CMD...: PASS when CMD succeeds.
check() {
    local name="$1"
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# expect_eq NAME WANT GOT
expect_eq() {
    if [[ "$2" == "$3" ]]; then
        pass "$1"
    else
        fail "$1"
        printf '  want: %s\n  got:  %s\n' "$2" "$3"
    fi
}

# expect_contains NAME NEEDLE HAYSTACK_FILE
expect_contains() {
    if grep -qF -- "$2" "$3"; then
        pass "$1"
    else
        fail "$1"
        printf '  %s does not contain: %s\n' "$3" "$2"
    fi
}

# expect_absent NAME NEEDLE FILE
expect_absent() {
    if grep -qF -- "$2" "$3"; then
        fail "$1"
        printf '  %s contains what it must not\n' "$3"
    else
        pass "$1"
    fi
}

# ensure_gitlab_ci_local: sets GCL to the gitlab-ci-local executable, installing it if needed.
ensure_gitlab_ci_local() {
    need node "Node 20 (Debian nodejs or nodesource)"
    need npm
    need git
    need_cmd rsync rsync
    mkdir -p "$STACKSHIP_CACHE"
    GCL="$STACKSHIP_CACHE/gitlab-ci-local/node_modules/.bin/gitlab-ci-local"
    if [[ ! -x "$GCL" || "$("$GCL" --version 2>/dev/null)" != "$GCL_VERSION" ]]; then
        log "npm install gitlab-ci-local@${GCL_VERSION} into ${STACKSHIP_CACHE}/gitlab-ci-local"
        npm install --prefix "$STACKSHIP_CACHE/gitlab-ci-local" --no-audit --no-fund --loglevel=error \
            "gitlab-ci-local@${GCL_VERSION}" >&2 || die "npm install gitlab-ci-local@${GCL_VERSION} failed"
    fi
}

# ensure_check_jsonschema: sets VENV to a venv with check-jsonschema, installing it if needed.
ensure_check_jsonschema() {
    need_cmd python3 python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    mkdir -p "$STACKSHIP_CACHE"
    VENV="$STACKSHIP_CACHE/venv"
    if [[ "$("$VENV/bin/check-jsonschema" --version 2>/dev/null)" != *" ${CHECK_JSONSCHEMA_VERSION}" ]]; then
        log "pip install check-jsonschema==${CHECK_JSONSCHEMA_VERSION} into ${VENV}"
        python3 -m venv "$VENV" || die "python3 -m venv ${VENV} failed"
        "$VENV/bin/pip" install -q "check-jsonschema==${CHECK_JSONSCHEMA_VERSION}" >&2 \
            || die "pip install check-jsonschema failed"
    fi
}
