#!/bin/bash
# nginx-proxy's entrypoint: nginx in the foreground, and a stop that drains its keep-alive
# connections before nginx quits.
#
# Swarm sends the stop signal when it stops the task; the edge stopped giving this task new
# connections about a second after it left DNS, shortly before. But keep-alive connections the
# edge opened earlier still carry requests, and nginx's own graceful stop closes the idle ones at
# once: a request already on its way in such a connection then gets no answer. So on SIGQUIT or
# SIGTERM this waits DRAIN_SECONDS while nginx keeps answering; meanwhile `keepalive_time`
# (default.conf, shorter than the wait) ends every busy keep-alive connection after an answer
# that says `Connection: close`, and clients reconnect through the edge to the new task. Then
# nginx gets SIGQUIT and finishes the requests in progress.
set -Eeuo pipefail

DRAIN_SECONDS="${DRAIN_SECONDS:-10}"

nginx -g 'daemon off;' &
nginx_pid=$!
stopping=""

# Runs as the trap of the stop signals.
# shellcheck disable=SC2317
drain() {
    [[ -z "$stopping" ]] || return 0
    stopping=1
    echo "stop signal: draining keep-alive connections for ${DRAIN_SECONDS} s, then a graceful stop" >&2
    sleep "$DRAIN_SECONDS"
    kill -QUIT "$nginx_pid" 2>/dev/null || true
}
trap drain QUIT TERM INT

status=0
while kill -0 "$nginx_pid" 2>/dev/null; do
    wait "$nginx_pid" && status=0 || status=$?
done
exit "$status"
