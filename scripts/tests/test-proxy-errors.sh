#!/usr/bin/env bash
# Errors under /api/ as a client sees them through nginx-proxy: every one is JSON
# {"error":{"code","message"}} with exactly one X-Request-Id, including the errors nginx answers
# itself (413, 502, 504). Deploys nothing.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/tests/harness.sh
. "$ROOT/scripts/tests/harness.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/test-proxy-errors.sh [--local-only | --live-only] [--manifests DIR]

Two parts, each printing PASS/FAIL lines; the last line is "N passed, M failed".

  local  Debian's nginx on loopback ports, run with each environment's proxy config
         (deploy-manifests/{dev,prod}/nginx-proxy/default.conf) with the upstreams pointed at a
         stub backend on loopback: 413 for a 1 MB POST, 502 (backend broke off; backend down),
         504 (backend too slow; proxy_read_timeout shortened to 2 s), the backend's own JSON
         errors passed through unchanged, one X-Request-Id, the one the backend was given.
  live   the running local prod stack at https://localhost (scripts/up.sh brings it up):
         413 for a 1 MB POST, the backend's 404 and 400, and one X-Request-Id on each; the
         client's own address reaches the row the backend stores (through the edge's PROXY
         protocol header and nginx's X-Forwarded-For).

Options:
  --local-only   skip the live part (no stack needed)
  --live-only    skip the local part
  --manifests DIR  take the proxy configs of the local part from DIR/{dev,prod}/nginx-proxy/
                 (default: the repository's deploy-manifests)
  -h, --help     this text
Exits non-zero when a check failed. Installs nginx, curl and openssl from Debian when missing.
USAGE
}

MANIFESTS="$ROOT/deploy-manifests"
WORK=""
STUB_PID=""
NGINX_PIDS=()

cleanup() {
    local pid
    for pid in "${NGINX_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    [[ -z "$STUB_PID" ]] || kill "$STUB_PID" 2>/dev/null || true
    [[ -z "$WORK" ]] || rm -rf "$WORK"
}

# fetch NAME CURL_ARGS...: runs curl, leaving the status in $WORK/NAME.status, the headers in
# $WORK/NAME.headers and the body in $WORK/NAME.body.
fetch() {
    local name="$1"
    shift
    curl -sS -m 20 -o "$WORK/$name.body" -D "$WORK/$name.headers" -w '%{http_code}' "$@" \
        >"$WORK/$name.status" 2>"$WORK/$name.err" || true
}

header_count() { grep -ci "^$2:" "$WORK/$1.headers" || true; }
# header_value NAME HEADER: the header's value in a saved response, empty when it has none.
header_value() { { grep -i -m1 "^$2:" "$WORK/$1.headers" || true; } | cut -d: -f2- | tr -d ' \r'; }
json_field() {
    python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d=d[k]
print(d)' "$WORK/$1.body" "$2" 2>/dev/null || true
}

# expect_json_error WHAT NAME STATUS CODE: the answer NAME is STATUS with a JSON error CODE, a
# non-empty message and exactly one X-Request-Id.
expect_json_error() {
    check "$1: $3 JSON $4, one X-Request-Id" json_error "$2" "$3" "$4"
}
json_error() {
    local name="$1" status="$2" code="$3" got ct ids
    got=$(cat "$WORK/$name.status")
    ct=$(header_value "$name" content-type)
    ids=$(header_count "$name" x-request-id)
    [[ "$got" == "$status" ]] \
        || fail "status $got, expected $status ($(head -c 200 "$WORK/$name.body"; cat "$WORK/$name.err"))"
    [[ "$ct" == application/json* ]] || fail "content-type '$ct', expected application/json ($(head -c 200 "$WORK/$name.body"))"
    [[ "$(json_field "$name" error.code)" == "$code" ]] || fail "error code '$(json_field "$name" error.code)', expected $code"
    [[ -n "$(json_field "$name" error.message)" ]] || fail "no error message"
    [[ "$ids" == 1 ]] || fail "$ids X-Request-Id headers, expected 1"
}

# expect_one_request_id WHAT NAME STATUS: STATUS with exactly one X-Request-Id.
expect_one_request_id() {
    check "$1: $3, one X-Request-Id" one_request_id "$2" "$3"
}
one_request_id() {
    local name="$1" status="$2" got ids
    got=$(cat "$WORK/$name.status")
    ids=$(header_count "$name" x-request-id)
    [[ "$got" == "$status" && "$ids" == 1 ]] \
        || fail "status $got (expected $status), $ids X-Request-Id headers (expected 1)"
}

# same_request_id NAME: the X-Request-Id the client got is the one the backend was given.
same_request_id() {
    [[ "$(header_value "$1" x-request-id)" == "$(json_field "$1" request_id_seen)" ]] \
        || fail "X-Request-Id '$(header_value "$1" x-request-id)' but the backend saw '$(json_field "$1" request_id_seen)'"
}

# prod_answers: the local prod stack answers on https://localhost.
prod_answers() {
    [[ "$(curl_env prod -o /dev/null -w '%{http_code}' https://localhost/api/service/ping 2>/dev/null || true)" == 200 ]] \
        || fail "it does not (bring it up with scripts/up.sh)"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

big_body() {
    python3 -c 'import json; print(json.dumps({"message": "x" * (1 << 20)}))' >"$WORK/big.json"
}

# The stub backend: answers like the backend does (JSON, echoing X-Request-Id), plus paths that
# misbehave. It writes its port to $WORK/stub.port.
start_stub() {
    python3 - "$WORK/stub.port" <<'PY' &
import http.server, json, socketserver, sys, time

class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # Like the backend: the request id it was given goes back out.
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", "stub-made"))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        rid = self.headers.get("X-Request-Id")
        if self.path == "/api/slow":
            time.sleep(5)
            self.answer(200, {"late": True})
        elif self.path == "/api/hangup":
            self.close_connection = True
            self.connection.shutdown(2)
        elif self.path == "/api/own-503":
            self.answer(503, {"error": {"code": "database_unavailable", "message": "database unavailable"}})
        else:
            self.answer(200, {"status": "ok", "request_id_seen": rid})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(201, {"stored": True})

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):
        pass  # nginx hanging up on /api/slow is expected

server = Server(("127.0.0.1", 0), Stub)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
    STUB_PID=$!
    wait_until 10 "the stub backend" test -s "$WORK/stub.port"
}

# start_nginx ENV: nginx with ENV's proxy config on loopback, upstreams at the stub. Sets
# PROXY_URL.
start_nginx() {
    local env="$1" dir="$WORK/nginx-$1" stub_port http_port tls_port
    stub_port=$(cat "$WORK/stub.port")
    http_port=$(free_port)
    tls_port=$(free_port)
    mkdir -p "$dir/tmp"
    chmod 777 "$dir/tmp"
    sed -e "s#http://backend:8080#http://127.0.0.1:${stub_port}#" \
        -e "s#http://frontend:8080#http://127.0.0.1:${stub_port}#" \
        -e "s#listen 8080 proxy_protocol default_server#listen 127.0.0.1:${http_port} proxy_protocol default_server#" \
        -e "s#listen 8443 ssl http2 proxy_protocol default_server#listen 127.0.0.1:${tls_port} ssl http2 proxy_protocol default_server#" \
        -e "s#/run/secrets/tls_cert#${WORK}/tls.crt#" \
        -e "s#/run/secrets/tls_key#${WORK}/tls.key#" \
        -e "s#/var/log/nginx/access.log#${dir}/access.log#" \
        -e "s#proxy_read_timeout    30s;#proxy_read_timeout    2s;#" \
        "$MANIFESTS/$env/nginx-proxy/default.conf" >"$dir/default.conf"
    grep -q "proxy_read_timeout    2s;" "$dir/default.conf" || die "$env: proxy_read_timeout not found in the config"
    grep -q "listen 127.0.0.1:${http_port} proxy_protocol default_server" "$dir/default.conf" \
        || die "$env: the config's listen 8080 proxy_protocol not found"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
    client_body_temp_path ${dir}/tmp/body;
    proxy_temp_path ${dir}/tmp/proxy;
    fastcgi_temp_path ${dir}/tmp/fastcgi;
    uwsgi_temp_path ${dir}/tmp/uwsgi;
    scgi_temp_path ${dir}/tmp/scgi;
    include ${dir}/default.conf;
}
CONF
    nginx -t -q -c "$dir/nginx.conf" -p "$dir" || die "$env: nginx rejects the config"
    nginx -c "$dir/nginx.conf" -p "$dir"
    wait_until 10 "nginx ($env)" test -s "$dir/nginx.pid"
    NGINX_PIDS+=("$(cat "$dir/nginx.pid")")
    if [[ "$env" == prod ]]; then
        PROXY_URL="https://localhost:${tls_port}"
    else
        PROXY_URL="http://127.0.0.1:${http_port}"
    fi
}

local_checks() {
    need_cmd nginx nginx
    need_cmd openssl openssl
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
    start_stub
    local env
    for env in dev prod; do
        start_nginx "$env"
        # As the edge does: a PROXY protocol header first on every connection.
        local c=(-k --haproxy-protocol --resolve "localhost:${PROXY_URL##*:}:127.0.0.1")
        fetch "$env-big" "${c[@]}" -X POST -H 'content-type: application/json' \
            --data-binary @"$WORK/big.json" "$PROXY_URL/api/log"
        expect_json_error "local $env: 1 MB POST /api/log" "$env-big" 413 payload_too_large
        fetch "$env-slow" "${c[@]}" "$PROXY_URL/api/slow"
        expect_json_error "local $env: backend slower than proxy_read_timeout" "$env-slow" 504 timeout_unknown_outcome
        fetch "$env-hangup" "${c[@]}" "$PROXY_URL/api/hangup"
        expect_json_error "local $env: backend breaks off" "$env-hangup" 502 bad_gateway
        fetch "$env-own" "${c[@]}" "$PROXY_URL/api/own-503"
        expect_json_error "local $env: the backend's own 503 passes through" "$env-own" 503 database_unavailable
        fetch "$env-ok" "${c[@]}" "$PROXY_URL/api/ok"
        expect_one_request_id "local $env: GET /api/ok" "$env-ok" 200
        check "local $env: the client's X-Request-Id is the one the backend was given" same_request_id "$env-ok"
    done
    # The backend gone altogether: connection refused.
    kill "$STUB_PID"
    wait "$STUB_PID" 2>/dev/null || true
    STUB_PID=""
    fetch down -k --haproxy-protocol "$PROXY_URL/api/service/ping"
    expect_json_error "local prod: backend down" down 502 bad_gateway
}

live_checks() {
    # Without the stack nothing else here can pass: one FAIL says so.
    if ! prod_answers 2>/dev/null; then
        check "live: the prod stack answers on https://localhost" prod_answers
        return 0
    fi
    local c=(--cacert "$STACKSHIP_PROD_CERT")
    fetch live-big "${c[@]}" -X POST -H 'content-type: application/json' \
        --data-binary @"$WORK/big.json" https://localhost/api/log
    expect_json_error "live: 1 MB POST /api/log" live-big 413 payload_too_large
    fetch live-404 "${c[@]}" https://localhost/api/no-such-route
    expect_json_error "live: unknown route under /api/" live-404 404 not_found
    fetch live-400 "${c[@]}" -X POST -H 'content-type: application/json' --data '{"message":' \
        https://localhost/api/log
    expect_json_error "live: malformed JSON" live-400 400 malformed_json
    fetch live-ok "${c[@]}" https://localhost/api/service/version
    expect_one_request_id "live: GET /api/service/version" live-ok 200
    # The client's own address crosses the edge (PROXY protocol) and nginx (X-Forwarded-For) into
    # the row the backend stores. Here a local client reaches the host-mode port through Docker's
    # gateway on docker_gwbridge: that is the address the edge sees; any other one (the edge's or
    # nginx's overlay address) means it was lost on the way.
    local gateway
    gateway="$(docker network inspect docker_gwbridge -f '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true)"
    fetch live-addr "${c[@]}" -X POST -H 'content-type: application/json' \
        --data '{"message":"test-proxy-errors: client address"}' https://localhost/api/log
    expect_eq "live: the client's address reaches the backend's row (${gateway:-the gateway of docker_gwbridge})" \
        "201 ${gateway:-(no docker_gwbridge)}" \
        "$(cat "$WORK/live-addr.status") $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("client_addr"))' "$WORK/live-addr.body" 2>/dev/null)"
}

main() {
    local local_part=1 live_part=1
    while (($#)); do
        case $1 in
        --local-only) live_part=0 ;;
        --live-only) local_part=0 ;;
        --manifests)
            [[ $# -ge 2 ]] || die "--manifests needs a directory"
            MANIFESTS=$(cd "$2" && pwd)
            shift
            ;;
        -h | --help) usage; return 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    need_cmd curl curl
    need_cmd python3 python3
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/stackship-proxy-errors.XXXXXX")
    trap cleanup EXIT
    big_body
    ((local_part)) && local_checks
    ((live_part)) && live_checks
    harness_summary
}

main "$@"
