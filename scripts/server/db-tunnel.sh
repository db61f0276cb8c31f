#!/usr/bin/env bash
# Opens a short-lived way into an environment's database from a workstation without publishing
# its port: on the Swarm manager it listens on 127.0.0.1:PORT only, and a workstation reaches
# that over SSH (ssh -N -L PORT:127.0.0.1:PORT manager). Everything it makes is removed when it
# exits (Ctrl-C, SIGTERM, --for elapsed, or a part of the tunnel died).
#
# The path: 127.0.0.1:PORT on the manager -> a forwarder container on this node, published on
# loopback only -> a private attachable overlay network made for this tunnel -> a one-off helper
# task (on any node) that is also on the stack's data network -> postgres:5432. Both forwarders
# are a few lines of Perl run by Postgres's own image (perl-base is in every Debian image), as
# user nobody, under an init, with a read-only root filesystem and no capabilities.
set -Eeuo pipefail

# shellcheck source=scripts/server/ops-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ops-lib.sh"

# FORWARD LISTEN_PORT HOST PORT: accepts on LISTEN_PORT, one process per connection, copies
# bytes both ways to HOST:PORT until either side closes.
# shellcheck disable=SC2016  # Perl, not shell
FORWARD='use strict; use IO::Socket::INET; use IO::Select;
my ($lport, $host, $port) = @ARGV;
$SIG{CHLD} = "IGNORE"; $SIG{TERM} = sub { exit 0 };
my $l = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $lport, Listen => 32, ReuseAddr => 1)
    or die "cannot listen on $lport: $!\n";
print STDERR "forwarding :$lport to $host:$port\n";
while (1) {
    my $c = $l->accept or next;
    my $pid = fork;
    if (!defined $pid || $pid) { close $c; next; }
    close $l;
    my $u = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Timeout => 10)
        or do { print STDERR "cannot connect to $host:$port: $!\n"; exit 1; };
    my $s = IO::Select->new($c, $u);
    my $buf;
    LOOP: while (1) {
        for my $r ($s->can_read) {
            my $n = sysread($r, $buf, 65536);
            last LOOP unless $n;
            my $w = $r == $c ? $u : $c;
            my $off = 0;
            while ($off < $n) {
                my $k = syswrite($w, $buf, $n - $off, $off);
                last LOOP unless defined $k;
                $off += $k;
            }
        }
    }
    exit 0;
}'

usage() {
    cat <<'USAGE'
Usage: db-tunnel.sh ENV [--port P] [--for SECONDS]

Makes ENV's database (dev or prod) reachable on 127.0.0.1:P of this manager (default P 15432)
until Ctrl-C. From a workstation:

  ssh -N -L 15432:127.0.0.1:15432 root@MANAGER     # keep it open
  psql "host=127.0.0.1 port=15432 user=backend dbname=backend"

The password is the environment's database password (the backend's db_password secret).

  --port P       the loopback port on the manager (default 15432)
  --for SECONDS  close the tunnel after SECONDS (default: stay open until interrupted)
USAGE
}

# postgres_answers PORT: something on 127.0.0.1:PORT speaks Postgres: an SSLRequest gets 'S' or 'N'
# (a bare connect proves nothing: docker-proxy accepts before anything is behind it).
postgres_answers() {
    local answer=""
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf '\x00\x00\x00\x08\x04\xd2\x16\x2f' >&3
    read -r -n 1 -t 3 answer <&3 || true
    exec 3<&-
    [[ "$answer" == S || "$answer" == N ]]
}

main() {
    local env="" port=15432 duration="" image net fwd deadline user db
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]{0,4}$ && "$2" -le 65535 ]] || die "--port needs a port number"; port="$2"; shift ;;
            --for) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--for needs a number of seconds"; duration="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) [[ -z "$env" ]] || die "give one environment (got '${env}' and '$1')"; env="$1" ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing the environment (dev or prod)"; }
    ops_env "$env"
    if postgres_answers "$port" 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
        die "127.0.0.1:${port} is already in use: choose another with --port"
    fi
    image="$(ops_service_image postgres)"
    user="$(ops_service_env postgres POSTGRES_USER postgres)"
    db="$(ops_service_env postgres POSTGRES_DB "$user")"
    net="${OPS_STACK}-ops-tunnel-$$"
    fwd="${net}-local"

    docker network create --driver overlay --attachable --label "${OPS_PROJECT}.ops-helper=db-tunnel" "$net" >/dev/null \
        || die "cannot create the tunnel network ${net}"
    ops_on_exit "remove_network '${net}'"
    ops_helper tunnel --image "$image" --network "$net" --user 65534 --entrypoint perl --detach \
        -- -e "$FORWARD" 5432 postgres 5432
    ops_on_exit "docker rm -f '${fwd}' >/dev/null 2>&1 && log 'removed the local forwarder ${fwd}'"
    docker run -d --name "$fwd" --label "${OPS_PROJECT}.ops-helper=db-tunnel" --network "$net" \
        -p "127.0.0.1:${port}:5432" --read-only --cap-drop ALL --init --user 65534 --entrypoint perl \
        "$image" -e "$FORWARD" 5432 "$OPS_HELPER" 5432 >/dev/null \
        || die "cannot start the local forwarder on 127.0.0.1:${port}"
    deadline=$((SECONDS + 60))
    until postgres_answers "$port" 2>/dev/null; do
        ((SECONDS < deadline)) || die "the ${env} database does not answer through 127.0.0.1:${port} after 60s: $(docker logs --tail 5 "$fwd" 2>&1 | tr '\n' ' ')"
        sleep 0.5
    done
    log "tunnel open: 127.0.0.1:${port} on this manager -> ${OPS_STACK} postgres:5432"
    log "from a workstation: ssh -N -L ${port}:127.0.0.1:${port} <user>@<this manager>, then"
    log "  psql \"host=127.0.0.1 port=${port} user=${user} dbname=${db}\""
    log "${duration:+closing in ${duration}s; }Ctrl-C closes the tunnel"
    printf 'ready 127.0.0.1:%s\n' "$port"
    deadline=$((SECONDS + ${duration:-0}))
    while [[ -z "$duration" ]] || ((SECONDS < deadline)); do
        # In the background, so a signal ends the wait at once.
        sleep 2 &
        wait $! || true
        [[ "$(docker inspect "$fwd" --format '{{.State.Running}}' 2>/dev/null)" == true ]] \
            || die "the local forwarder ${fwd} stopped: $(docker logs --tail 5 "$fwd" 2>&1 | tr '\n' ' ')"
        [[ "$(ops_task_state "$OPS_HELPER" | cut -d'|' -f1)" == running ]] \
            || die "the helper ${OPS_HELPER} stopped: $(ops_task_state "$OPS_HELPER")"
    done
    log "closing the tunnel after ${duration}s"
}

# remove_network NET: once the helper's task has left it (service removal is asynchronous), and
# until this node's copy of it is gone too.
remove_network() {
    local deadline=$((SECONDS + 30))
    while docker network inspect "$1" >/dev/null 2>&1; do
        docker network rm "$1" >/dev/null 2>&1 || true
        if ((SECONDS >= deadline)); then
            warn "could not remove the network $1: remove it with 'docker network rm $1'"
            return 0
        fi
        sleep 0.5
    done
    log "removed the tunnel network $1"
}

main "$@"
