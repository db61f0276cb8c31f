#!/usr/bin/env bash
# Makes sure the third-party images the stack names exist locally: the runtime base
# (debian:bookworm-slim), postgres:15-bookworm, nginx:1.27-bookworm, haproxy:2.8-bookworm and
# prom/prometheus:v2.53.3.
#
# For each one it uses the real image when present or pullable. Only when the pull fails (a
# machine with no image registry) does it build a stand-in from Debian packages, under a name
# that cannot collide with the real image (stackship-standin/...), and it says so on stderr.
# Prints the image to use for each as KEY=VALUE lines on stdout:
#   BASE_IMAGE=...  POSTGRES_IMAGE=...  NGINX_IMAGE=...  HAPROXY_IMAGE=...  PROMETHEUS_IMAGE=...
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REAL_BASE_IMAGE="debian:bookworm-slim"
REAL_POSTGRES_IMAGE="postgres:15-bookworm"
REAL_NGINX_IMAGE="nginx:1.27-bookworm"
REAL_HAPROXY_IMAGE="haproxy:2.8-bookworm"
REAL_PROMETHEUS_IMAGE="prom/prometheus:v2.53.3"
STANDIN_BASE_IMAGE="stackship-standin/debian:bookworm"
STANDIN_POSTGRES_IMAGE="stackship-standin/postgres:15"
STANDIN_NGINX_IMAGE="stackship-standin/nginx:1.22"
STANDIN_HAPROXY_IMAGE="stackship-standin/haproxy:2.6"
STANDIN_PROMETHEUS_IMAGE="stackship-standin/prometheus:2.42"
BASE_ROOT_LABEL="org.stackship.standin.root-mode"

usage() {
    cat <<USAGE
Usage: scripts/base-images.sh [--rebuild-standins] [--help]

Ensures ${REAL_BASE_IMAGE}, ${REAL_POSTGRES_IMAGE}, ${REAL_NGINX_IMAGE},
${REAL_HAPROXY_IMAGE} and ${REAL_PROMETHEUS_IMAGE} are available, pulling them; when a pull
fails, builds local stand-ins (${STANDIN_BASE_IMAGE}, ${STANDIN_POSTGRES_IMAGE},
${STANDIN_NGINX_IMAGE}, ${STANDIN_HAPROXY_IMAGE}, ${STANDIN_PROMETHEUS_IMAGE}) from Debian
packages.
Prints BASE_IMAGE=, POSTGRES_IMAGE=, NGINX_IMAGE=, HAPROXY_IMAGE=, PROMETHEUS_IMAGE= lines naming
the images to use.

  --rebuild-standins   rebuild the stand-ins from scratch (no layer cache; the Debian base
                       again with debootstrap)
USAGE
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# try_real IMAGE: true when the real image is local or can be pulled now.
try_real() {
    local image="$1"
    image_exists "$image" && return 0
    log "pulling ${image}"
    timeout 300 docker pull -q "$image" >/dev/null 2>&1
}

standin_banner() {
    warn "=================================================================="
    warn "cannot pull ${1}: using the LOCAL STAND-IN ${2}"
    warn "(built from Debian packages; not the real image)"
    warn "=================================================================="
}

build_standin_base() {
    local rootfs
    # Bases imported before the root directory's mode was fixed (below) lack this label.
    if image_exists "$STANDIN_BASE_IMAGE" && [[ -z "$REBUILD" ]] \
        && [[ "$(docker image inspect "$STANDIN_BASE_IMAGE" --format "{{index .Config.Labels \"${BASE_ROOT_LABEL}\"}}")" == 0755 ]]; then
        return 0
    fi
    apt_install debootstrap
    need debootstrap
    rootfs="$(mktemp -d /var/tmp/stackship-rootfs.XXXXXX)"
    # shellcheck disable=SC2064  # expand now: the path is fixed for this trap
    trap "rm -rf '${rootfs}'" RETURN
    log "debootstrap bookworm (minbase) into ${rootfs}"
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null \
        || die "debootstrap failed (see ${rootfs}/debootstrap/debootstrap.log)"
    # As in Debian's own container images: no service starts during package installs, and
    # downloaded packages and lists are not kept.
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT
    printf 'APT::Install-Recommends "false";\n' > "$rootfs/etc/apt/apt.conf.d/no-recommends"
    # Slim, as debian:bookworm-slim: no documentation, manuals or translations, now or later.
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
        "$rootfs"/usr/share/lintian/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    # mktemp made the directory 0700 and tar records it as the image's "/": storage drivers that
    # apply it (vfs, on the multi-node test hosts) would leave / unreadable to non-root users.
    chmod 0755 "$rootfs"
    log "importing ${STANDIN_BASE_IMAGE}"
    tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' --change "LABEL ${BASE_ROOT_LABEL}=0755" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$STANDIN_BASE_IMAGE" >/dev/null
}

# build_standin NAME CONTEXT BASE: build a stand-in image from images/<context>. Always built,
# from the layer cache when nothing changed (a second or two, and the same image, so the same
# digest), so a change to images/<context> reaches the stack on the next bring-up.
build_standin() {
    local name="$1" context="$2" base="$3" no_cache=()
    [[ -z "$REBUILD" ]] || no_cache=(--no-cache)
    log "building stand-in ${name} from $(repo_root)/images/${context}"
    docker build -q "${no_cache[@]}" --build-arg "BASE_IMAGE=${base}" -t "$name" "$(repo_root)/images/${context}" >/dev/null \
        || die "building stand-in ${name} failed"
}

REBUILD=""

main() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --rebuild-standins) REBUILD=1 ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    ensure_docker

    local base postgres nginx haproxy prometheus
    if try_real "$REAL_BASE_IMAGE"; then
        base="$REAL_BASE_IMAGE"
    else
        standin_banner "$REAL_BASE_IMAGE" "$STANDIN_BASE_IMAGE"
        build_standin_base
        base="$STANDIN_BASE_IMAGE"
    fi
    if try_real "$REAL_POSTGRES_IMAGE"; then
        postgres="$REAL_POSTGRES_IMAGE"
    else
        standin_banner "$REAL_POSTGRES_IMAGE" "$STANDIN_POSTGRES_IMAGE"
        build_standin "$STANDIN_POSTGRES_IMAGE" postgres "$base"
        postgres="$STANDIN_POSTGRES_IMAGE"
    fi
    if try_real "$REAL_NGINX_IMAGE"; then
        nginx="$REAL_NGINX_IMAGE"
    else
        standin_banner "$REAL_NGINX_IMAGE" "$STANDIN_NGINX_IMAGE"
        build_standin "$STANDIN_NGINX_IMAGE" nginx "$base"
        nginx="$STANDIN_NGINX_IMAGE"
    fi
    if try_real "$REAL_HAPROXY_IMAGE"; then
        haproxy="$REAL_HAPROXY_IMAGE"
    else
        standin_banner "$REAL_HAPROXY_IMAGE" "$STANDIN_HAPROXY_IMAGE"
        build_standin "$STANDIN_HAPROXY_IMAGE" haproxy "$base"
        haproxy="$STANDIN_HAPROXY_IMAGE"
    fi
    if try_real "$REAL_PROMETHEUS_IMAGE"; then
        prometheus="$REAL_PROMETHEUS_IMAGE"
    else
        standin_banner "$REAL_PROMETHEUS_IMAGE" "$STANDIN_PROMETHEUS_IMAGE"
        build_standin "$STANDIN_PROMETHEUS_IMAGE" prometheus "$base"
        prometheus="$STANDIN_PROMETHEUS_IMAGE"
    fi
    printf 'BASE_IMAGE=%s\nPOSTGRES_IMAGE=%s\nNGINX_IMAGE=%s\nHAPROXY_IMAGE=%s\nPROMETHEUS_IMAGE=%s\n' \
        "$base" "$postgres" "$nginx" "$haproxy" "$prometheus"
}

main "$@"
