#!/usr/bin/env bash
# Fuzzes config-hasher's compose parser and name interpolation (cargo fuzz, libFuzzer)
# for a bounded time. Not part of .ci/run: run it by hand or on a schedule.
#
# The machine has only a stable Rust toolchain, and cargo fuzz needs nightly-only
# flags (-Zsanitizer=address, -Cpasses=sancov-module). RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them; this script sets it unless the active rustc is a
# nightly already. If the toolchain still refuses, the script says so and fails.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

TARGET="parse_compose"
SECONDS_TO_FUZZ=60
MAX_LEN=8192

usage() {
    cat <<USAGE
Usage: scripts/tests/fuzz-config-hasher.sh [--time SECONDS] [--max-len BYTES] [--help]

Builds the cargo-fuzz target '${TARGET}' in tools/config-hasher/fuzz and runs it
for --time seconds (default ${SECONDS_TO_FUZZ}; libFuzzer's -max_total_time), with inputs
up to --max-len bytes (default ${MAX_LEN}). The corpus is seeded with the test
fixtures' compose files and kept in tools/config-hasher/fuzz/corpus/${TARGET};
crashes land in tools/config-hasher/fuzz/artifacts/${TARGET} (both git-ignored).

Installs cargo-fuzz with 'cargo install cargo-fuzz' when it is missing.
Uses CARGO_TARGET_DIR when set. Exits non-zero on a crash, a build failure, or
when the toolchain cannot build fuzz targets.
USAGE
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --time)
                [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--time needs a positive number of seconds"
                SECONDS_TO_FUZZ="$2"
                shift
                ;;
            --max-len)
                [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--max-len needs a positive number of bytes"
                MAX_LEN="$2"
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
}

ensure_cargo_fuzz() {
    need cargo "install Rust with rustup"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install --locked cargo-fuzz >&2 || die "cargo install cargo-fuzz failed"
    fi
    log "$(cargo fuzz --version)"
}

# Sets RUSTC_BOOTSTRAP=1 unless rustc is a nightly.
choose_toolchain() {
    local version
    version="$(rustc --version)"
    if [[ "$version" == *nightly* ]]; then
        log "using ${version}"
    else
        export RUSTC_BOOTSTRAP=1
        log "using ${version} with RUSTC_BOOTSTRAP=1 (no nightly toolchain)"
    fi
}

build_target() {
    local crate="$1"
    log "building fuzz target ${TARGET}"
    if ! (cd "$crate" && cargo fuzz build "$TARGET" >&2); then
        die "cannot build the fuzz target with $(rustc --version): cargo fuzz needs nightly-only" \
            "compiler flags and this toolchain refuses them even with RUSTC_BOOTSTRAP=1;" \
            "see tools/config-hasher/README.md (Fuzzing)"
    fi
}

seed_corpus() {
    local crate="$1" corpus="$2" f
    mkdir -p "$corpus"
    for f in "$crate"/tests/fixtures/*/docker-compose.*.yaml; do
        cp -n "$f" "$corpus/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
    done
}

run_fuzzer() {
    local crate="$1" corpus="$2"
    log "fuzzing ${TARGET} for ${SECONDS_TO_FUZZ}s"
    # libFuzzer stops itself after -max_total_time; the outer timeout is only a
    # safety net (SIGINT lets libFuzzer print its final stats).
    (cd "$crate" && timeout --signal=INT "$((SECONDS_TO_FUZZ + 120))" \
        cargo fuzz run "$TARGET" "$corpus" -- \
        -max_total_time="$SECONDS_TO_FUZZ" \
        -max_len="$MAX_LEN" \
        -dict=fuzz/compose.dict \
        -print_final_stats=1 >&2) || die "fuzzing failed: see the crash report above and fuzz/artifacts/${TARGET}"
    log "no crash in ${SECONDS_TO_FUZZ}s; corpus: ${corpus}"
}

main() {
    parse_args "$@"
    local root crate corpus
    root="$(repo_root)"
    crate="$root/tools/config-hasher"
    corpus="$crate/fuzz/corpus/$TARGET"
    ensure_cargo_fuzz
    choose_toolchain
    build_target "$crate"
    seed_corpus "$crate" "$corpus"
    run_fuzzer "$crate" "$corpus"
}

main "$@"
