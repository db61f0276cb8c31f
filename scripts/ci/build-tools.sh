#!/usr/bin/env bash
# Builds the deploy tools that go to the Swarm manager (config-hasher, rollout-watcher) as
# statically linked executables, so they run on whatever Linux the manager has (an older glibc,
# musl, or an image with nothing else in it). glibc's static libc (libc6-dev) with
# `-C target-feature=+crt-static`; --target keeps build scripts and proc macros dynamic.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

TOOLS=(config-hasher rollout-watcher stackship)

usage() {
    cat <<'USAGE'
Usage: scripts/ci/build-tools.sh [--out DIR]

Builds config-hasher, rollout-watcher and stackship statically linked into DIR (default .build/tools),
checks that they are static and run, and prints DIR. Honours CARGO_TARGET_DIR.
USAGE
}

main() {
    local out="" root target triple tool
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    root="$(repo_root)"
    out="${out:-$root/.build/tools}"
    need cargo "install the Rust toolchain (rustup)"
    need rustc
    need readelf "apt-get install binutils"
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    [[ "$triple" == *-linux-gnu ]] || die "host ${triple}: static builds here expect a *-linux-gnu toolchain"
    target="${CARGO_TARGET_DIR:-$root/target}"
    log "cargo build --release --target ${triple} (crt-static): ${TOOLS[*]}"
    (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple" -p config-hasher -p rollout-watcher -p stackship) >&2 \
        || die "static build of the deploy tools failed (is libc6-dev installed?)"
    mkdir -p "$out"
    for tool in "${TOOLS[@]}"; do
        install -m 0755 "$target/$triple/release/$tool" "$out/$tool"
        # A dynamically linked executable names its loader (PT_INTERP); a static(-pie) one not.
        local headers
        headers="$(readelf -lW "$out/$tool")" || die "readelf cannot read ${out}/${tool}"
        if grep -q 'program interpreter' <<<"$headers"; then
            die "${out}/${tool} is dynamically linked: $(grep 'program interpreter' <<<"$headers")"
        fi
        "$out/$tool" --help >/dev/null || die "${out}/${tool} does not run"
    done
    log "static tools in ${out}: ${TOOLS[*]}"
    printf '%s\n' "$out"
}

main "$@"
