#!/usr/bin/env bash
# Benchmarks the backend against references measured in the same run on the same machine:
#   POST /api/log (group commit)  vs  pgbench single-row INSERTs into the same table
#   GET /api/service/version      vs  nginx serving a static file of the same size
#   GET /api/service/version through the edge (HAProxy, PROXY protocol) and nginx-proxy
#                                 vs  through nginx-proxy alone (the hop the edge adds)
# and writes the figures to bench/results/backend.txt (ratios at the end, as key=value lines).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/tests/pg-throwaway.sh
. "$ROOT/scripts/tests/pg-throwaway.sh"

DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=16
OUT="$ROOT/bench/results/backend.txt"
WORK=""
BACKEND_PID=""
NGINX_PID=""
PROXY_PIDS=()
EDGE_PID=""

usage() {
    cat <<USAGE
Usage: scripts/bench/bench-backend.sh [--duration SECONDS] [--rounds N] [--out FILE]

Runs each load for --duration seconds (default $DURATION) at $CONNECTIONS connections/clients,
alternating with its reference for --rounds rounds (default $ROUNDS), and keeps the median run:
  1. POST /api/log            (wrk)      vs  pgbench INSERT into log_entries  -> post_vs_pgbench
  2. GET /api/service/version (wrk)      vs  nginx static file, same size     -> get_vs_nginx
  3. the same GET through the edge and the proxy (dev's haproxy.cfg and nginx-proxy config, on
     loopback)                           vs  through the proxy alone   -> edge_hop_rps_ratio,
                                                                          edge_hop_p50_ms
Writes $OUT (or --out FILE). Installs wrk, nginx, haproxy and PostgreSQL (Debian) when missing.
USAGE
}

cleanup() {
    [[ -n "$BACKEND_PID" ]] && kill "$BACKEND_PID" 2>/dev/null && wait "$BACKEND_PID" 2>/dev/null
    [[ -n "$NGINX_PID" ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    local pid
    for pid in "${PROXY_PIDS[@]}" $EDGE_PID; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    pg_stop_throwaway
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    return 0
}

# wrk output -> "rps p50_ms p99_ms"; fails on socket errors or non-2xx answers.
parse_wrk() {
    local file=$1
    if grep -q 'Non-2xx' "$file"; then
        cat "$file" >&2
        die "wrk saw non-2xx answers"
    fi
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }
    ' "$file"
}

run_wrk() {
    local name=$1
    shift
    log "wrk: $name (${DURATION}s, $CONNECTIONS connections)"
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" >"$WORK/$name.wrk"
    parse_wrk "$WORK/$name.wrk"
}

# run_pgbench ROUND: single-row INSERTs into the backend's table; prints tps.
run_pgbench() {
    log "pgbench: single-row INSERT (${DURATION}s, $CONNECTIONS clients)"
    PGPASSWORD=$PG_PASSWORD "$PG_BIN_DIR/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n \
        -c "$CONNECTIONS" -j 2 -T "$DURATION" -f "$WORK/insert.sql" postgres >"$WORK/pgbench-$1.out" 2>&1 ||
        { cat "$WORK/pgbench-$1.out" >&2; die "pgbench failed"; }
    local tps
    tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$WORK/pgbench-$1.out")
    [[ -n "$tps" ]] || { cat "$WORK/pgbench-$1.out" >&2; die "no tps in pgbench output"; }
    echo "$tps"
}

# median_run LINES: of "rps p50 p99" lines, the one with the median rps.
median_run() {
    sed '/^$/d' <<<"$1" | sort -n -k1,1 | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'
}

start_backend() {
    cat >"$WORK/config.toml" <<TOML
[server]
host = "127.0.0.1"
port = $BACKEND_PORT
[database]
host = "127.0.0.1"
port = $PG_PORT
user = "postgres"
name = "postgres"
password_file = "$PG_DIR/pwfile"
[telemetry]
format = "json"
filter = "warn"
TOML
    "$BACKEND_BIN" --config "$WORK/config.toml" >"$WORK/backend.log" 2>&1 &
    BACKEND_PID=$!
    local _
    for _ in $(seq 1 100); do
        if "$BACKEND_BIN" healthcheck --ready --config "$WORK/config.toml" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/backend.log" >&2
    die "backend did not become ready"
}

# start_proxy PORT PROXY_PROTOCOL(0|1): nginx with dev's nginx-proxy config on 127.0.0.1:PORT (its
# listen with or without proxy_protocol), routing /api/ to the local backend.
start_proxy() {
    local port=$1 pp=$2 dir="$WORK/proxy-$1" listen
    listen="listen 127.0.0.1:${port} default_server"
    ((pp == 0)) || listen="listen 127.0.0.1:${port} proxy_protocol default_server"
    mkdir -p "$dir"
    sed -e "s#http://backend:8080#http://127.0.0.1:${BACKEND_PORT}#" \
        -e "s#http://frontend:8080#http://127.0.0.1:${BACKEND_PORT}#" \
        -e "s#listen 8080 proxy_protocol default_server#${listen}#" \
        -e "s#/var/log/nginx/access.log#${dir}/access.log#" \
        "$ROOT/deploy-manifests/dev/nginx-proxy/default.conf" >"$dir/default.conf"
    grep -q "$listen;" "$dir/default.conf" || die "dev's nginx-proxy config has no 'listen 8080 proxy_protocol default_server'"
    cat >"$dir/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    fastcgi_temp_path $dir;
    uwsgi_temp_path $dir;
    scgi_temp_path $dir;
    include $dir/default.conf;
}
NGINX
    nginx -c "$dir/nginx.conf" 2>"$dir/stderr" &
    PROXY_PIDS+=($!)
}

# start_edge PORT PROXY_PORT: HAProxy with dev's edge config on 127.0.0.1:PORT, its one server the
# proxy on PROXY_PORT (instead of the tasks Docker's DNS names).
start_edge() {
    local port=$1 proxy_port=$2 health_port
    health_port=$(free_port)
    sed -e "s#^    bind :8080\$#    bind 127.0.0.1:${port}#" \
        -e "s#^    bind 127.0.0.1:8404\$#    bind 127.0.0.1:${health_port}#" \
        -e "s#^    default-server init-addr none resolvers docker resolve-prefer ipv4 #    default-server #" \
        -e "s#^    server-template proxy 8 nginx-proxy:8080\$#    server proxy1 127.0.0.1:${proxy_port}#" \
        "$ROOT/deploy-manifests/dev/edge/haproxy.cfg" >"$WORK/haproxy.cfg"
    if ! grep -q "server proxy1 127.0.0.1:${proxy_port}" "$WORK/haproxy.cfg" || ! grep -q "bind 127.0.0.1:${port}" "$WORK/haproxy.cfg"; then
        die "dev's haproxy.cfg no longer has the lines this benchmark replaces"
    fi
    haproxy -W -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    EDGE_PID=$!
}

start_nginx() {
    mkdir -p "$WORK/www" "$WORK/nginx"
    curl -fsS "http://127.0.0.1:$BACKEND_PORT/api/service/version" >"$WORK/www/version.json"
    cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/json;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
NGINX
    # nginx workers run unprivileged when started as root: let them read the files.
    chmod 755 "$WORK" "$WORK/www"
    nginx -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
    NGINX_PID=$!
    local _
    for _ in $(seq 1 50); do
        curl -fsS "http://127.0.0.1:$NGINX_PORT/version.json" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$WORK/nginx/stderr" "$WORK/nginx/error.log" >&2 2>/dev/null || true
    die "nginx did not start"
}

main() {
    while (($#)); do
        case $1 in
        --duration) DURATION=${2:?--duration needs a value}; shift ;;
        --rounds) ROUNDS=${2:?--rounds needs a value}; shift ;;
        --out) OUT=${2:?--out needs a value}; shift ;;
        -h | --help) usage; return 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    [[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive number of seconds, got '$DURATION'"
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, got '$ROUNDS'"
    need_cmd wrk wrk
    need_cmd nginx nginx-light
    need_cmd haproxy haproxy
    need_cmd curl curl
    need_cmd python3 python3
    pg_ensure_installed
    trap cleanup EXIT
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-backend.XXXXXX")

    log "building the release backend"
    (cd "$ROOT" && cargo build --release -p backend --quiet)
    local target
    target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    BACKEND_BIN="$target/release/backend"

    pg_start_throwaway
    BACKEND_PORT=$(free_port)
    NGINX_PORT=$(free_port)
    start_backend
    start_nginx
    PROXY_PORT=$(free_port)
    PROXY_PP_PORT=$(free_port)
    EDGE_PORT=$(free_port)
    start_proxy "$PROXY_PORT" 0
    start_proxy "$PROXY_PP_PORT" 1
    start_edge "$EDGE_PORT" "$PROXY_PP_PORT"
    wait_until 10 "the proxy" curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/service/version"
    wait_until 10 "the edge" curl -fsS -o /dev/null "http://127.0.0.1:$EDGE_PORT/api/service/version"

    cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"message":"benchmark entry from wrk"}'
wrk.headers["Content-Type"] = "application/json"
LUA
    cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO log_entries (message, client_addr) VALUES ('benchmark entry from wrk', '127.0.0.1');
SQL

    # Alternate the runs and its reference, ROUNDS times, and keep each one's median run:
    # a burst of noise on this shared machine then hits both sides alike.
    local round posts="" gets="" nginxs="" pgbenchs="" directs="" edges=""
    for round in $(seq 1 "$ROUNDS"); do
        log "round $round of $ROUNDS"
        posts+=$(run_wrk "post-$round" -s "$WORK/post.lua" "http://127.0.0.1:$BACKEND_PORT/api/log")$'\n'
        pgbenchs+="$(run_pgbench "$round") - -"$'\n'
        gets+=$(run_wrk "version-$round" "http://127.0.0.1:$BACKEND_PORT/api/service/version")$'\n'
        nginxs+=$(run_wrk "nginx-$round" "http://127.0.0.1:$NGINX_PORT/version.json")$'\n'
        directs+=$(run_wrk "proxy-$round" "http://127.0.0.1:$PROXY_PORT/api/service/version")$'\n'
        edges+=$(run_wrk "edge-$round" "http://127.0.0.1:$EDGE_PORT/api/service/version")$'\n'
    done
    local post get nginx_static pgbench_tps _
    post=$(median_run "$posts")
    get=$(median_run "$gets")
    nginx_static=$(median_run "$nginxs")
    read -r pgbench_tps _ <<<"$(median_run "$pgbenchs")"
    local direct_rps direct_p50 direct_p99 edge_rps edge_p50 edge_p99
    read -r direct_rps direct_p50 direct_p99 <<<"$(median_run "$directs")"
    read -r edge_rps edge_p50 edge_p99 <<<"$(median_run "$edges")"

    local post_rps post_p50 post_p99 get_rps get_p50 get_p99 ngx_rps ngx_p50 ngx_p99
    read -r post_rps post_p50 post_p99 <<<"$post"
    read -r get_rps get_p50 get_p99 <<<"$get"
    read -r ngx_rps ngx_p50 ngx_p99 <<<"$nginx_static"
    local rows
    rows=$(PGPASSWORD=$PG_PASSWORD "$PG_BIN_DIR/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc \
        "SELECT count(*) FROM log_entries" postgres)
    local batches
    batches=$(curl -fsS "http://127.0.0.1:$BACKEND_PORT/metrics" | awk '/^log_group_commit_rows_(sum|count) / { v[$1] = $2 } END { if (v["log_group_commit_rows_count"] > 0) printf "%.1f", v["log_group_commit_rows_sum"] / v["log_group_commit_rows_count"] }')

    mkdir -p "$(dirname "$OUT")"
    {
        echo "# backend benchmark"
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "machine: $(uname -srm), $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "backend: $("$BACKEND_BIN" --version), release build; PostgreSQL $("$PG_BIN_DIR/postgres" --version | awk '{ print $3 }') throwaway cluster (fsync on, synchronous_commit on)"
        echo "load: ${DURATION}s per run, $CONNECTIONS connections/clients, wrk -t2, everything on this one machine;"
        echo "      $ROUNDS rounds alternating each run with its reference; the median run of each is shown"
        echo
        printf '%-38s %10s %10s %10s\n' "run" "req/s" "p50 ms" "p99 ms"
        printf '%-38s %10s %10s %10s\n' "POST /api/log (group commit)" "$post_rps" "$post_p50" "$post_p99"
        printf '%-38s %10s %10s %10s\n' "pgbench single-row INSERT (tps)" "$pgbench_tps" "-" "-"
        printf '%-38s %10s %10s %10s\n' "GET /api/service/version" "$get_rps" "$get_p50" "$get_p99"
        printf '%-38s %10s %10s %10s\n' "nginx static file, same size" "$ngx_rps" "$ngx_p50" "$ngx_p99"
        printf '%-38s %10s %10s %10s\n' "GET version via nginx-proxy" "$direct_rps" "$direct_p50" "$direct_p99"
        printf '%-38s %10s %10s %10s\n' "GET version via edge + nginx-proxy" "$edge_rps" "$edge_p50" "$edge_p99"
        echo
        echo "rows in log_entries after the runs: $rows; mean rows per group commit: ${batches:-n/a}"
        echo
        echo "post_log_rps=$post_rps"
        echo "post_log_p50_ms=$post_p50"
        echo "post_log_p99_ms=$post_p99"
        echo "pgbench_insert_tps=$pgbench_tps"
        echo "post_vs_pgbench=$(awk -v a="$post_rps" -v b="$pgbench_tps" 'BEGIN { printf "%.2f", a / b }')"
        echo "get_version_rps=$get_rps"
        echo "nginx_static_rps=$ngx_rps"
        echo "get_vs_nginx=$(awk -v a="$get_rps" -v b="$ngx_rps" 'BEGIN { printf "%.2f", a / b }')"
        echo "proxy_get_rps=$direct_rps"
        echo "edge_get_rps=$edge_rps"
        # Through the edge ÷ without (target >= 0.90), and the p50 it adds (target <= 0.5 ms).
        echo "edge_hop_rps_ratio=$(awk -v a="$edge_rps" -v b="$direct_rps" 'BEGIN { printf "%.2f", a / b }')"
        echo "edge_hop_p50_ms=$(awk -v a="$edge_p50" -v b="$direct_p50" 'BEGIN { printf "%.3f", a - b }')"
    } >"$OUT"
    log "wrote $OUT"
    cat "$OUT" >&2
}

main "$@"
