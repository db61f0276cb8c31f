#!/usr/bin/env bash
# Container healthcheck: GET /healthz on the local nginx, exit 0 on HTTP 200.
# Plain bash (/dev/tcp), so the image needs no HTTP client.
set -Eeuo pipefail

main() {
    local status_line
    exec 3<>/dev/tcp/127.0.0.1/8080
    printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    IFS= read -r -t 2 status_line <&3
    exec 3<&-
    [[ "$status_line" == "HTTP/1."?" 200 "* ]]
}

main "$@"
