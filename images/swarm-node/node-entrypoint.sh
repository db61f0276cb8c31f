#!/usr/bin/env bash
# A test node's PID 1 (under docker's --init): relays 127.0.0.1:5000 to the manager's registry
# relay (REGISTRY_UPSTREAM, host:port) so image names like 127.0.0.1:5000/stackship/backend pull
# here as on the manager, then runs dockerd with the given arguments.
set -Eeuo pipefail

if [[ -n "${REGISTRY_UPSTREAM:-}" ]]; then
    socat TCP-LISTEN:5000,bind=127.0.0.1,fork,reuseaddr "TCP:${REGISTRY_UPSTREAM}" &
fi
exec dockerd "$@"
