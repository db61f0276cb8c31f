#!/usr/bin/env bash
# Times the config-hasher release binary on a generated compose file with 20 configs
# and writes bench/results/config-hasher.txt: machine details at the top, the figures
# as key=value lines at the end (wall_ms_median and peak_rss_kb last).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

RUNS=200
WARMUP=10
CONFIGS=20
TARGET_MS=10
OUT=""
WORK=""

usage() {
    cat <<USAGE
Usage: scripts/bench/bench-config-hasher.sh [--runs N] [--out FILE] [--help]

Builds config-hasher in release mode (cargo build --release -p config-hasher, honouring
CARGO_TARGET_DIR), generates a deploy directory with a compose file of ${CONFIGS} file-backed
configs (1 to 40 KiB each, plus services with anchors and merge keys) in a temporary
directory, then:
  * runs '--compose FILE --format export' ${WARMUP} times to warm the page cache, then
    --runs times (default ${RUNS}), timing each run with bash's EPOCHREALTIME;
  * after each of those runs times /bin/true the same way, as the process start-up
    baseline under the same load;
  * runs it 5 times under /usr/bin/time -v for the peak resident set size.
Writes bench/results/config-hasher.txt (or --out FILE). Target: a run well under ${TARGET_MS} ms.
Installs Debian's 'time' package when /usr/bin/time is missing.
USAGE
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --runs)
                [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive number"
                RUNS="$2"
                shift
                ;;
            --out)
                [[ $# -ge 2 ]] || die "--out needs a file"
                OUT="$2"
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

cleanup() {
    if [[ -n "$WORK" ]]; then
        rm -rf "$WORK"
    fi
}

# build_binary ROOT: prints the path of the freshly built release binary.
build_binary() {
    local root="$1" target_dir
    need cargo "install Rust with rustup"
    target_dir="${CARGO_TARGET_DIR:-$root/target}"
    log "building the release binary (target dir ${target_dir})"
    (cd "$root" && cargo build --release --quiet -p config-hasher >&2) || die "cargo build failed"
    [[ -x "$target_dir/release/config-hasher" ]] || die "no binary at $target_dir/release/config-hasher"
    printf '%s\n' "$target_dir/release/config-hasher"
}

# generate_stack DIR: a compose file with $CONFIGS configs and the files they name.
generate_stack() {
    local dir="$1" i kib compose="$1/docker-compose.bench.yaml"
    mkdir -p "$dir/deploy-manifests/bench"
    {
        printf 'x-deploy: &deploy\n  restart_policy:\n    condition: any\n\n'
        printf 'services:\n'
        for i in $(seq 1 "$CONFIGS"); do
            printf '  service-%02d:\n    image: example/service:%d\n    deploy:\n      <<: *deploy\n' "$i" "$i"
            printf '    configs:\n      - source: config-%02d\n        target: /etc/service/config.conf\n' "$i"
        done
        printf '\nconfigs:\n'
        for i in $(seq 1 "$CONFIGS"); do
            # shellcheck disable=SC2016 # a literal ${VAR} for the compose file
            printf '  config-%02d:\n    name: ${BENCH_SERVICE_%02d_CONFIG}\n    file: ./deploy-manifests/bench/service-%02d.conf\n' "$i" "$i" "$i"
        done
        printf '\nsecrets:\n  registry-token:\n    external: true\n'
    } >"$compose"
    for i in $(seq 1 "$CONFIGS"); do
        # Sizes from 1 to 40 KiB: typical nginx/TOML configs and certificate bundles.
        kib=$(((i * 7) % 40 + 1))
        head -c "$((kib * 1024))" /dev/urandom | base64 >"$dir/deploy-manifests/bench/service-$(printf '%02d' "$i").conf"
    done
    printf '%s\n' "$compose"
}

# time_runs OUT_BIN OUT_BASELINE BIN COMPOSE: times RUNS runs of the binary, each
# followed by a run of /bin/true, so that both see the same machine load; writes
# one wall time in microseconds per line to each output file.
time_runs() {
    local out_bin="$1" out_base="$2" bin="$3" compose="$4" i start end
    for ((i = 0; i < WARMUP; i++)); do
        "$bin" --compose "$compose" --format export >/dev/null
    done
    : >"$out_bin"
    : >"$out_base"
    for ((i = 0; i < RUNS; i++)); do
        start=${EPOCHREALTIME/./}
        "$bin" --compose "$compose" --format export >/dev/null
        end=${EPOCHREALTIME/./}
        printf '%d\n' "$((end - start))" >>"$out_bin"
        start=${EPOCHREALTIME/./}
        /bin/true >/dev/null
        end=${EPOCHREALTIME/./}
        printf '%d\n' "$((end - start))" >>"$out_base"
    done
}

# peak_rss_kb BIN COMPOSE: the largest "Maximum resident set size" over 5 runs.
peak_rss_kb() {
    local bin="$1" compose="$2" i max=0 kb
    for ((i = 0; i < 5; i++)); do
        kb="$(/usr/bin/time -v "$bin" --compose "$compose" --format export 2>&1 >/dev/null \
            | awk -F': ' '/Maximum resident set size/ { print $2 }')"
        [[ "$kb" =~ ^[0-9]+$ ]] || die "could not read the peak RSS from /usr/bin/time -v"
        if ((kb > max)); then
            max="$kb"
        fi
    done
    printf '%d\n' "$max"
}

# stats FILE: "min median p90 p99 max mean" in milliseconds from microsecond samples.
stats() {
    sort -n "$1" | awk '
        { v[NR] = $1; sum += $1 }
        function at(q,   i) { i = int(q * (NR - 1)) + 1; return v[i] / 1000 }
        END {
            median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.3f %.3f %.3f %.3f %.3f %.3f\n", v[1] / 1000, median / 1000, at(0.90), at(0.99), v[NR] / 1000, sum / NR / 1000
        }'
}

cpu_model() {
    awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true
}

main() {
    parse_args "$@"
    local root bin compose samples min median p90 p99 max mean rss bytes names spawn load
    root="$(repo_root)"
    OUT="${OUT:-$root/bench/results/config-hasher.txt}"
    [[ -x /usr/bin/time ]] || apt_install time
    WORK="$(mktemp -d)"
    trap cleanup EXIT

    bin="$(build_binary "$root")"
    compose="$(generate_stack "$WORK")"
    names="$("$bin" --compose "$compose" | wc -l)"
    [[ "$names" -eq "$CONFIGS" ]] || die "expected ${CONFIGS} names, got ${names}"

    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    log "timing ${RUNS} runs (after ${WARMUP} warm-up runs); load average ${load}"
    samples="$WORK/samples.txt"
    time_runs "$samples" "$WORK/baseline.txt" "$bin" "$compose"
    read -r min median p90 p99 max mean < <(stats "$samples")
    spawn="$(stats "$WORK/baseline.txt" | awk '{ print $2 }')"
    log "measuring peak RSS"
    rss="$(peak_rss_kb "$bin" "$compose")"
    bytes="$(stat -c %s "$bin")"

    mkdir -p "$(dirname "$OUT")"
    {
        printf '# config-hasher benchmark: one run names %d configs of a generated compose file\n' "$CONFIGS"
        printf '# date: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '# machine: %s, %s cores, %s\n' "$(uname -srm)" "$(nproc)" "$(cpu_model)"
        printf '# load average before timing: %s (other work on the machine inflates the figures)\n' "$load"
        printf '# rustc: %s\n' "$(rustc --version)"
        printf '# command: config-hasher --compose docker-compose.bench.yaml --format export (stdout to /dev/null)\n'
        printf '# timing: %d runs after %d warm-up runs, wall clock per process (fork+exec included)\n' "$RUNS" "$WARMUP"
        printf '# baseline: /bin/true timed the same way, alternating with the runs (process start-up alone)\n'
        printf '# peak RSS: largest of 5 runs under /usr/bin/time -v\n'
        printf '# target: median well under %d ms\n' "$TARGET_MS"
        printf 'configs=%d\n' "$CONFIGS"
        printf 'runs=%d\n' "$RUNS"
        printf 'binary_bytes=%d\n' "$bytes"
        printf 'wall_ms_min=%s\n' "$min"
        printf 'wall_ms_mean=%s\n' "$mean"
        printf 'wall_ms_p90=%s\n' "$p90"
        printf 'wall_ms_p99=%s\n' "$p99"
        printf 'wall_ms_max=%s\n' "$max"
        printf 'baseline_true_ms_median=%s\n' "$spawn"
        printf 'wall_ms_median=%s\n' "$median"
        printf 'peak_rss_kb=%d\n' "$rss"
    } >"$OUT"
    log "median ${median} ms, p90 ${p90} ms, peak RSS ${rss} KiB; wrote ${OUT}"
    awk -v m="$median" -v t="$TARGET_MS" 'BEGIN { exit !(m < t) }' \
        || warn "median ${median} ms is not under the ${TARGET_MS} ms target"
}

main "$@"
