#!/usr/bin/env bash
# The project's test command: static checks, the Rust tests against a real throwaway PostgreSQL,
# then the end-to-end tests of the stack on a local Docker Swarm. Installs what it needs.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/tests/pg-throwaway.sh
. "$ROOT/scripts/tests/pg-throwaway.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/test.sh [--no-stack] [--no-lint] [-- CARGO_TEST_ARGS...]

Runs, in order:
  1. lint:   cargo fmt --check, cargo clippy --all-targets -D warnings, shellcheck
  2. cargo test --workspace, against a throwaway PostgreSQL started on a free loopback port
     (the Debian postgresql package is installed when missing) and stopped at the end; the
     ACME tests run their own Pebble and the backup tests restic (Debian's pebble and restic
     packages, installed when missing)
  3. the pipeline tests (scripts/tests/test-pipeline.sh): .gitlab-ci.yml against GitLab's schema,
     the MR label matrix, the CI job scripts against a stand-in GitLab API; then the
     test harness's self-test (scripts/tests/harness-selftest.sh)
  4. the stack's end-to-end tests (scripts/tests/test-stack.sh): Docker Engine, local swarm,
     images, deploys, rollbacks, a headless browser; then the SSH deploy end to end
     (scripts/tests/test-ssh-deploy.sh: a real sshd on loopback, setup-server.sh's user); then the
     multi-node tests (scripts/tests/test-multinode.sh: two worker nodes as containers)

Options:
  --no-stack   skip step 4 (quick local runs; CI runs everything)
  --no-lint    skip step 1
  -h, --help   this text
Run as root on a fresh Debian machine, it installs every prerequisite itself.
USAGE
}

lint() {
    log "cargo fmt --check"
    cargo fmt --all --check
    log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    need_cmd shellcheck shellcheck
    log "shellcheck"
    local scripts=()
    mapfile -t scripts < <(git -C "$ROOT" ls-files '*.sh' .ci/run)
    if ((${#scripts[@]})); then
        # Following sources (-x), and each file on its own, as an editor checks it.
        (cd "$ROOT" && shellcheck -x "${scripts[@]}" && shellcheck -S warning "${scripts[@]}")
    fi
}

cargo_tests() {
    # tools/stackship/tests/acme_pebble.rs starts pebble and pebble-challtestsrv on loopback;
    # stackship's db tests run restic on a repository in a temp dir.
    need_cmd pebble pebble
    need_cmd restic restic
    pg_start_throwaway
    trap pg_stop_throwaway EXIT
    log "cargo test --workspace"
    (cd "$ROOT" && cargo test --workspace "$@")
    pg_stop_throwaway
    trap - EXIT
}

main() {
    local stack=1 do_lint=1
    while (($#)); do
        case $1 in
        --no-stack) stack=0 ;;
        --no-lint) do_lint=0 ;;
        -h | --help) usage; return 0 ;;
        --) shift; break ;;
        *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    cd "$ROOT"
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
    need_cmd python3 python3
    need_cmd runuser util-linux
    cargo --version >&2
    ((do_lint)) && lint
    cargo_tests "$@"
    log "pipeline tests"
    "$ROOT/scripts/tests/test-pipeline.sh"
    log "test harness self-test"
    "$ROOT/scripts/tests/harness-selftest.sh"
    if ((stack)); then
        log "stack end-to-end tests"
        "$ROOT/scripts/tests/test-stack.sh"
        log "SSH deploy end-to-end tests"
        "$ROOT/scripts/tests/test-ssh-deploy.sh"
        log "multi-node tests"
        "$ROOT/scripts/tests/test-multinode.sh"
    fi
    log "all tests passed"
}

main "$@"
