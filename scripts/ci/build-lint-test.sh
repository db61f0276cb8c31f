#!/usr/bin/env bash
# The build-lint-test job: tool versions, cargo fmt --check, clippy -D warnings, the tests
# (DATABASE_URL points at the job's Postgres service), then the binaries the later jobs use:
# backend in ${CARGO_TARGET_DIR}/release/ (APP_VERSION = the image tag baked in), and the
# deploy tools config-hasher, rollout-watcher and stackship statically linked in .build/tools/
# (scripts/ci/build-tools.sh), so they run on whatever Linux the manager has.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/build-lint-test.sh [--help]

Runs in the build-lint-test job (any machine with cargo): versions, fmt, clippy, tests,
release binaries. Needs DATABASE_URL (a Postgres where the user may create databases).
USAGE
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        "") ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    local root tag
    root="$(repo_root)"
    cd "$root"
    need cargo "install the Rust toolchain (rustup)"
    [[ -n "${DATABASE_URL:-}" ]] || die "DATABASE_URL is not set (the job's Postgres service)"
    log "tool versions"
    rustc --version >&2
    cargo --version >&2
    cargo fmt --version >&2
    cargo clippy --version >&2
    log "cargo fmt --check"
    cargo fmt --all --check || die "cargo fmt --check found unformatted code (run cargo fmt)"
    log "cargo clippy -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings || die "clippy found warnings"
    log "cargo test --workspace"
    cargo test --workspace --locked || die "tests failed"
    tag="$("$root/scripts/ci/image-tag.sh")" || die "cannot compute the image tag"
    log "release binaries (APP_VERSION=${tag})"
    APP_VERSION="$tag" cargo build --release --locked -p backend || die "release build failed"
    "$root/scripts/ci/build-tools.sh" --out "$root/.build/tools" >/dev/null
    log "binaries: ${CARGO_TARGET_DIR:-target}/release/backend, .build/tools/{config-hasher,rollout-watcher,stackship}"
}

main "$@"
