#!/usr/bin/env bash
# Removes a merge request's review stack, stackship-review-<iid>, and everything it made, on the
# Swarm manager: its services (and so its containers), networks, configs, secrets and volumes
# (the throwaway database), then its deploy directory <root>/review/<iid>/. Under that
# directory's deploy lock, so it never runs beside a deploy of the same stack. Succeeds when
# nothing is left, also when there was nothing to remove (GitLab may run review-stop twice);
# fails, naming what is left, when something cannot be removed.
#
# Self-contained: the review-stop job uploads it on its own (the stack's release may be gone).
set -Eeuo pipefail

SCRIPT_NAME="review-stop"
PROJECT="stackship"

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; exit 1; }

usage() {
    cat <<'USAGE'
Usage: review-stop.sh IID [--root DIR] [--timeout SECONDS]

Removes the review stack stackship-review-IID and everything it made: services, networks,
configs, secrets, volumes, and its deploy directory DIR/review/IID.
  --root DIR         the deploy root (default /data/stackship/deploy)
  --timeout SECONDS  how long to wait for the stack's containers to stop (default 180)
Exit status 0 when nothing of the stack is left (also when nothing was there).
USAGE
}

STACK=""
IID=""

# leftovers: one "kind name" line per object of the stack that still exists: labelled with the
# stack's namespace (what docker stack deploy and stackship deploy made), or named after the stack.
leftovers() {
    local kind
    for kind in service network config secret volume; do
        {
            docker "$kind" ls --filter "label=com.docker.stack.namespace=${STACK}" --format '{{.Name}}'
            docker "$kind" ls --format '{{.Name}}' | grep -E "^${STACK}[-_]" || true
        } | sort -u | sed "s/^/${kind} /"
    done
}

# containers: this stack's containers on this node (running or stopped).
containers() { docker ps -aq --filter "label=com.docker.stack.namespace=${STACK}"; }

remove_all() {
    local timeout="$1" deadline kind name left
    if [[ -n "$(docker service ls -q --filter "label=com.docker.stack.namespace=${STACK}")" ]]; then
        log "docker stack rm ${STACK}"
        docker stack rm "$STACK" >&2 || log "docker stack rm reported errors; removing what is left one by one"
    fi
    # Networks and volumes can go only once the containers are gone.
    deadline=$((SECONDS + timeout))
    until [[ -z "$(docker service ls -q --filter "label=com.docker.stack.namespace=${STACK}")" && -z "$(containers)" ]]; do
        ((SECONDS < deadline)) || die "the containers of ${STACK} are still there after ${timeout}s: $(containers | tr '\n' ' ')"
        sleep 1
    done
    # Whatever docker stack rm left (a network still detaching, the volume, a secret it did
    # not know): remove it, and try again for a while.
    deadline=$((SECONDS + 60))
    while left="$(leftovers)" && [[ -n "$left" ]]; do
        while read -r kind name; do
            docker "$kind" rm "$name" >/dev/null 2>&1 && log "removed ${kind} ${name}"
        done <<<"$left"
        left="$(leftovers)"
        [[ -n "$left" ]] || break
        ((SECONDS < deadline)) || die "cannot remove what is left of ${STACK}: $(tr '\n' ',' <<<"$left")"
        sleep 2
    done
}

main() {
    local root="/data/${PROJECT}/deploy" timeout=180
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h | --help) usage; return 0 ;;
            --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root="$2"; shift ;;
            --timeout) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a number of seconds"; timeout="$2"; shift ;;
            *)
                [[ -z "$IID" && "$1" =~ ^[1-9][0-9]{0,8}$ ]] || { usage >&2; die "expected one merge request IID (a positive number), got '$1'"; }
                IID="$1"
                ;;
        esac
        shift
    done
    [[ -n "$IID" ]] || { usage >&2; die "missing the merge request IID"; }
    [[ "$root" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--root '${root}' is not a plain absolute path"
    STACK="${PROJECT}-review-${IID}"
    local dir="${root%/}/review/${IID}" before after
    [[ -d "${root%/}/review" ]] || die "${root%/}/review is missing (scripts/server/setup-server.sh makes it)"
    command -v docker >/dev/null 2>&1 || die "docker is required"
    command -v flock >/dev/null 2>&1 || die "flock is required (apt-get install util-linux)"

    # The stack's deploy lock: a running deploy of this stack finishes first.
    mkdir -p "$dir"
    exec 9>>"$dir/deploy.lock" || die "cannot open ${dir}/deploy.lock"
    if ! flock -n 9; then
        log "a deploy of ${STACK} is running; waiting up to 900s"
        flock -w 900 9 || die "the ${STACK} deploy lock is still held after 900s"
    fi
    before="$(leftovers)"
    if [[ -z "$before" ]]; then
        log "nothing of ${STACK} is left in the swarm"
    else
        log "removing ${STACK}: $(awk '{print $1}' <<<"$before" | sort | uniq -c | awk '{printf "%s %s(s) ", $1, $2}')"
        remove_all "$timeout"
    fi
    after="$(leftovers)"
    [[ -z "$after" ]] || die "still there: $(tr '\n' ',' <<<"$after")"
    rm -rf "$dir"
    log "${STACK} removed (nothing of it is left; ${dir} removed)"
}

main "$@"
