# shellcheck shell=bash
# Helpers shared by the scripts (sourced, not run).

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Installs Debian packages (as root, non-interactive); runs `apt-get update` once per process.
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to install: $*"
    if [[ -z "${APT_UPDATED:-}" ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Installs the package providing each missing command: `need_cmd CMD PACKAGE`.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}
