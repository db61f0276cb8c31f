#!/usr/bin/env bash
# Prepares a Swarm manager for the pipeline's deploy jobs. Run once as root on a fresh Debian
# server (safe to re-run):
#   - Docker Engine, openssh-server, rsync, restic; a swarm (init when this engine is in none);
#   - the placement labels when no node has them: stackship.edge, stackship.postgres.<env>,
#     stackship.zone (lib.sh ensure_placement_labels);
#   - the deploy user: key-only login with exactly the CI public key (restricted: no pty, no
#     forwarding), no password, in the docker group;
#   - per environment: the deploy directory (owned by the deploy user), the data directory,
#     and the database password secret when it is missing; the review stacks' parent
#     directory <root>/review/ (owned by the deploy user);
#   - per environment whose deploy.env sets ACME_DOMAINS: a daily `stackship cert renew ENV` as the
#     deploy user (a systemd timer, else an /etc/cron.d entry); removed when it sets none;
#   - per environment: `stackship db scheduled ENV` every minute as the deploy user (a systemd
#     timer, else an /etc/cron.d entry): it backs the database up into <root>/<env>/backups/
#     (made here, owned by the deploy user) and into the restic repository BACKUP_REPOSITORY
#     when deploy.env sets one, and test-restores it, each when it is due;
# and prints the host key line to paste into the CI variable SSH_KNOWN_HOSTS (stdout).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/server/setup-server.sh --ci-key FILE [options]

  --ci-key FILE          the CI public key (the pair of the SSH_PRIVATE_KEY CI variable)
  --user NAME            the deploy user (default stackship-deploy; the SERVER_USER CI variable)
  --envs "dev prod"      environments to prepare (default both)
  --deploy-root DIR      deploy directories (default ${STACKSHIP_DEPLOY_ROOT})
  --ssh-host NAME        host name in the printed known_hosts line (default: hostname -f;
                         use the SERVER_HOST CI variable's value)
  --ssh-port N           sshd's port, for the known_hosts line (default 22)
  --host-key FILE        sshd's public host key (default /etc/ssh/ssh_host_ed25519_key.pub)
  --sshd-config-dir DIR  where the deploy user's sshd drop-in goes (default /etc/ssh/sshd_config.d)
  --advertise-addr ADDR  swarm advertise address when the swarm is initialised here

Certificates from an ACME CA (stackship cert): for each environment whose
<deploy root>/<env>/deploy.env sets ACME_DOMAINS, a daily renewal runs
<deploy root>/<env>/current/stackship cert renew <env> as the deploy user (a no-op
until the certificate is within ACME_RENEW_DAYS of expiry): the systemd timer
${STACKSHIP_PROJECT}-cert-renew-<env>.timer, or /etc/cron.d/${STACKSHIP_PROJECT}-cert-renew-<env>
without systemd. Set ACME_DOMAINS, then run this script again to install it.

Database backups (stackship db): for each environment, every minute the deploy user runs
<deploy root>/<env>/current/stackship db scheduled <env> (the systemd timer
${STACKSHIP_PROJECT}-db-backup-<env>.timer, or /etc/cron.d/${STACKSHIP_PROJECT}-db-backup-<env>
without systemd). It does nothing until a backup is due (BACKUP_EVERY seconds, default a day)
or a test restore is (BACKUP_TEST_RESTORE_EVERY, default a week). Backups go to
<deploy root>/<env>/backups/, and also to the restic repository BACKUP_REPOSITORY when that
environment's deploy.env sets it, with the repository password in
<deploy root>/<env>/secrets/backup-repository-password (for sftp: also backup-ssh-key and
backup-known-hosts there). stackship db check <env> says whether the backups are healthy.

stdout: the line for SSH_KNOWN_HOSTS. Progress on stderr.
USAGE
}

CI_KEY=""
DEPLOY_USER="stackship-deploy"
ENVS=(dev prod)
DEPLOY_ROOT="$STACKSHIP_DEPLOY_ROOT"
SSH_HOST=""
SSH_PORT=22
HOST_KEY="/etc/ssh/ssh_host_ed25519_key.pub"
SSHD_DIR="/etc/ssh/sshd_config.d"
ADVERTISE=""

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --ci-key) [[ $# -ge 2 ]] || die "--ci-key needs a file"; CI_KEY="$2"; shift ;;
            --user) [[ $# -ge 2 ]] || die "--user needs a name"; DEPLOY_USER="$2"; shift ;;
            --envs) [[ $# -ge 2 ]] || die "--envs needs a list"; read -r -a ENVS <<<"$2"; shift ;;
            --deploy-root) [[ $# -ge 2 ]] || die "--deploy-root needs a directory"; DEPLOY_ROOT="$2"; shift ;;
            --ssh-host) [[ $# -ge 2 ]] || die "--ssh-host needs a name"; SSH_HOST="$2"; shift ;;
            --ssh-port) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]{0,4}$ ]] || die "--ssh-port needs a port"; SSH_PORT="$2"; shift ;;
            --host-key) [[ $# -ge 2 ]] || die "--host-key needs a file"; HOST_KEY="$2"; shift ;;
            --sshd-config-dir) [[ $# -ge 2 ]] || die "--sshd-config-dir needs a directory"; SSHD_DIR="$2"; shift ;;
            --advertise-addr) [[ $# -ge 2 ]] || die "--advertise-addr needs an address"; ADVERTISE="$2"; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    [[ -n "$CI_KEY" ]] || { usage >&2; die "missing --ci-key FILE"; }
    [[ -r "$CI_KEY" ]] || die "cannot read the CI public key '${CI_KEY}'"
    [[ "$DEPLOY_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "'${DEPLOY_USER}' is not a user name"
    [[ "$DEPLOY_ROOT" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--deploy-root '${DEPLOY_ROOT}' is not a plain absolute path"
    [[ ${#ENVS[@]} -gt 0 ]] || die "--envs is empty"
    local env
    for env in "${ENVS[@]}"; do check_env "$env"; done
    SSH_HOST="${SSH_HOST:-$(hostname -f 2>/dev/null || hostname)}"
}

ensure_swarm_here() {
    local state
    state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
    case "$state" in
        active)
            [[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" == "true" ]] \
                || die "this engine is a swarm worker: run setup-server.sh on a manager"
            ;;
        inactive)
            log "docker swarm init${ADVERTISE:+ --advertise-addr ${ADVERTISE}}"
            docker swarm init ${ADVERTISE:+--advertise-addr "$ADVERTISE"} >/dev/null \
                || die "docker swarm init failed (give --advertise-addr ADDR on a host with several addresses)"
            ;;
        *) die "swarm state is '${state}'; fix the swarm first (docker info)" ;;
    esac
    ensure_placement_labels
}

# ensure_user: the deploy user, key-only, with exactly the CI key.
ensure_user() {
    local home key_line
    ssh-keygen -l -f "$CI_KEY" >/dev/null 2>&1 || die "'${CI_KEY}' is not an SSH public key"
    [[ "$(grep -cv '^[[:space:]]*$' "$CI_KEY")" -eq 1 ]] || die "'${CI_KEY}' must hold exactly one public key"
    [[ "$(head -c 40 "$CI_KEY")" != *PRIVATE* ]] || die "'${CI_KEY}' is a private key: give the .pub file"
    if ! id "$DEPLOY_USER" >/dev/null 2>&1; then
        log "creating user ${DEPLOY_USER}"
        useradd --create-home --user-group --shell /bin/bash "$DEPLOY_USER" || die "useradd ${DEPLOY_USER} failed"
    fi
    # '*': no password can match, yet the account is not locked (sshd refuses locked ones).
    usermod -p '*' "$DEPLOY_USER"
    usermod -aG docker "$DEPLOY_USER"
    home="$(getent passwd "$DEPLOY_USER" | cut -d: -f6)"
    [[ -d "$home" ]] || die "the home directory of ${DEPLOY_USER} (${home}) is missing"
    install -d -m 0700 -o "$DEPLOY_USER" -g "$DEPLOY_USER" "$home/.ssh"
    key_line="restrict $(grep -v '^[[:space:]]*$' "$CI_KEY")"
    (umask 077 && printf '%s\n' "$key_line" > "$home/.ssh/authorized_keys.new")
    chown "$DEPLOY_USER:$DEPLOY_USER" "$home/.ssh/authorized_keys.new"
    mv "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"
    log "${DEPLOY_USER}: authorized_keys holds only the CI key ($(ssh-keygen -l -f "$CI_KEY" | cut -d' ' -f2))"
}

# ensure_sshd: the deploy user may log in with a key only, whatever the rest of sshd allows.
ensure_sshd() {
    local file="$SSHD_DIR/50-${STACKSHIP_PROJECT}-${DEPLOY_USER}.conf"
    mkdir -p "$SSHD_DIR"
    cat > "$file" <<CONF
# Written by ${STACKSHIP_PROJECT}'s scripts/server/setup-server.sh: the deploy user logs in with its key only.
Match User ${DEPLOY_USER}
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    AuthenticationMethods publickey
    AllowTcpForwarding no
    X11Forwarding no
    PermitTTY no
CONF
    chmod 0644 "$file"
    if [[ "$SSHD_DIR" == /etc/ssh/sshd_config.d ]]; then
        sshd -t || die "sshd rejects its configuration (see above); fix it before reloading"
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ssh 2>/dev/null; then
            systemctl reload ssh || die "systemctl reload ssh failed"
            log "sshd reloaded"
        else
            warn "sshd is not running under systemd here: start or reload it to apply ${file}"
        fi
    fi
}

ensure_env() {
    local env="$1" dir="$DEPLOY_ROOT/$1" data="${STACKSHIP_DATA}/data/$1/postgres"
    install -d -m 0755 "$DEPLOY_ROOT"
    install -d -m 0750 -o "$DEPLOY_USER" -g "$DEPLOY_USER" "$dir"
    # Postgres runs as the image's postgres user (uid 999), never as root: the data directory
    # is its own, as the server requires (mode 0700).
    install -d -m 0700 -o 999 -g 999 "$data"
    # Source files of the file-backed secrets (prod's TLS certificate and key): the pipeline
    # installs them from CI File variables; only the deploy user reads them.
    install -d -m 0700 -o "$DEPLOY_USER" -g "$DEPLOY_USER" "$dir/secrets"
    # The database password (stackship-<env>-db-password-v1 and the bootstrap copy) is made by the
    # environment's first deploy, or beforehand with `stackship secret init <env> db-password`.
    if [[ "$env" == prod && ! -s "$dir/secrets/tls.crt" ]]; then
        warn "no TLS certificate in ${dir}/secrets/: set ACME_DOMAINS in ${dir}/deploy.env and run stackship cert issue ${env} once the release is copied (then re-run this script for the daily renewal), or set the CI File variables TLS_CERT_FILE and TLS_KEY_FILE (the prod deploy installs them), or put tls.crt and tls.key there (owner ${DEPLOY_USER}, mode 0600)"
    fi
    log "${env}: ${dir} (owner ${DEPLOY_USER}), data ${data}"
}

# systemd_running: systemd is this host's init (its timers run); else cron entries are used.
systemd_running() {
    command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]
}

# install_schedule UNIT WHAT COMMAND ON_CALENDAR CRON_TIME [TIMER_LINE...]: COMMAND as the deploy
# user on a schedule: the systemd timer UNIT.timer (OnCalendar=ON_CALENDAR, then the TIMER_LINEs)
# when systemd runs here, else /etc/cron.d/UNIT at CRON_TIME. WHAT names it in the units and the
# messages. Skipped (systemd) until the first deploy installs the release. Rewritten every run.
install_schedule() {
    local unit="$1" what="$2" command="$3" on_calendar="$4" cron_time="$5"
    shift 5
    local systemd_dir=/etc/systemd/system cron_file="/etc/cron.d/${unit}" line
    if systemd_running; then
        cat > "$systemd_dir/${unit}.service" <<UNIT
# Written by ${STACKSHIP_PROJECT}'s scripts/server/setup-server.sh.
[Unit]
Description=${what}
After=docker.service network-online.target
Wants=network-online.target
# Skipped, not failed, until the first deploy installs the release.
ConditionPathIsExecutable=${command%% *}

[Service]
Type=oneshot
User=${DEPLOY_USER}
Environment=STACKSHIP_DEPLOY_ROOT=${DEPLOY_ROOT}
ExecStart=${command}
UNIT
        {
            printf '# Written by %s%s\n[Unit]\nDescription=%s\n\n[Timer]\nOnCalendar=%s\n' \
                "$STACKSHIP_PROJECT" "'s scripts/server/setup-server.sh." "$what" "$on_calendar"
            for line in "$@"; do printf '%s\n' "$line"; done
            printf '\n[Install]\nWantedBy=timers.target\n'
        } > "$systemd_dir/${unit}.timer"
        chmod 0644 "$systemd_dir/${unit}.service" "$systemd_dir/${unit}.timer"
        rm -f "$cron_file"
        systemctl daemon-reload
        systemctl enable --now "${unit}.timer" >/dev/null 2>&1 || die "systemctl enable --now ${unit}.timer failed"
        log "${what}: ${unit}.timer (systemctl list-timers ${unit}.timer; journalctl -u ${unit})"
    else
        need_cmd cron cron
        cat > "$cron_file" <<CRON
# Written by ${STACKSHIP_PROJECT}'s scripts/server/setup-server.sh: ${what}.
SHELL=/bin/sh
# systemd's PATH for services: docker may be in /usr/local/bin.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
STACKSHIP_DEPLOY_ROOT=${DEPLOY_ROOT}
${cron_time} ${DEPLOY_USER} ${command} 2>&1 | logger -t ${unit}
CRON
        chmod 0644 "$cron_file"
        log "${what}: ${cron_file} (no systemd here; its output goes to syslog as ${unit})"
        pgrep -x cron >/dev/null 2>&1 || warn "cron is not running on this host: start it (service cron start), or this never runs: ${what}"
    fi
}

# remove_schedule UNIT WHY: what install_schedule installed for UNIT, if anything.
remove_schedule() {
    local unit="$1" why="$2" systemd_dir=/etc/systemd/system
    if [[ -e "$systemd_dir/${unit}.timer" ]]; then
        if systemd_running; then systemctl disable --now "${unit}.timer" >/dev/null 2>&1 || true; fi
        rm -f "$systemd_dir/${unit}.timer" "$systemd_dir/${unit}.service"
        if systemd_running; then systemctl daemon-reload; fi
        log "${why}: ${unit}.timer removed"
    fi
    if [[ -e "/etc/cron.d/${unit}" ]]; then
        rm -f "/etc/cron.d/${unit}"
        log "${why}: /etc/cron.d/${unit} removed"
    fi
}

# ensure_renewal ENV: the daily certificate renewal of ENV when its deploy.env sets ACME_DOMAINS;
# removed when it sets none.
ensure_renewal() {
    local env="$1" dir="$DEPLOY_ROOT/$1"
    local unit="${STACKSHIP_PROJECT}-cert-renew-${env}"
    if ! grep -Eq '^ACME_DOMAINS=[^[:space:]]' "$dir/deploy.env" 2>/dev/null; then
        remove_schedule "$unit" "${env}: no ACME_DOMAINS in ${dir}/deploy.env: certificate renewal"
        return 0
    fi
    install_schedule "$unit" "the daily ${env} TLS certificate renewal over ACME (stackship cert renew; a no-op until it is due)" \
        "${dir}/current/stackship cert renew ${env}" daily "17 4 * * *" RandomizedDelaySec=1h Persistent=true
}

# ensure_backup_schedule ENV: `stackship db scheduled ENV` every minute as the deploy user. It runs
# a backup or a test restore only when one is due, as deploy.env says (BACKUP_EVERY,
# BACKUP_TEST_RESTORE_EVERY), so it is always installed: local backups need no settings.
ensure_backup_schedule() {
    local env="$1" dir="$DEPLOY_ROOT/$1"
    local password="${dir}/secrets/backup-repository-password" offsite="local only (no BACKUP_REPOSITORY)"
    # The local dumps; stackship keeps BACKUP_KEEP of them, readable by the deploy user only.
    install -d -m 0700 -o "$DEPLOY_USER" -g "$DEPLOY_USER" "$dir/backups"
    if grep -Eq '^BACKUP_REPOSITORY=[^[:space:]]' "$dir/deploy.env" 2>/dev/null; then
        offsite="also off-site (BACKUP_REPOSITORY)"
        if [[ ! -s "$password" ]]; then
            warn "${env}: ${dir}/deploy.env sets BACKUP_REPOSITORY but ${password} is missing or empty: no off-site backup is made until it exists. Create it with a long random password: install -m 0600 -o ${DEPLOY_USER} -g ${DEPLOY_USER} /dev/null ${password} && head -c 32 /dev/urandom | base64 > ${password}; then keep a copy of that password off this server (a password manager): without it the off-site backups cannot be read"
        fi
    fi
    install_schedule "${STACKSHIP_PROJECT}-db-backup-${env}" \
        "the ${env} database backups, ${offsite}, and test restores, each when due (stackship db scheduled, every minute)" \
        "${dir}/current/stackship db scheduled ${env}" minutely "* * * * *" Persistent=false
}

print_known_hosts() {
    [[ -r "$HOST_KEY" ]] || die "cannot read the host key '${HOST_KEY}'"
    local name="$SSH_HOST"
    [[ "$SSH_PORT" == 22 ]] || name="[${SSH_HOST}]:${SSH_PORT}"
    log "put this line in the SSH_KNOWN_HOSTS CI variable (type File):"
    printf '%s %s\n' "$name" "$(cut -d' ' -f1,2 "$HOST_KEY")"
}

main() {
    parse_args "$@"
    require_root
    # Everything the manager runs is stackship (static, no runtime dependency) and Docker; sshd
    # and rsync receive the deploy job's upload; restic copies the database backups off-site.
    apt_install openssh-server openssh-client rsync restic
    ensure_docker
    ensure_swarm_here
    ensure_user
    ensure_sshd
    local env
    for env in "${ENVS[@]}"; do
        ensure_env "$env"
        ensure_renewal "$env"
        ensure_backup_schedule "$env"
    done
    # Review stacks: review-deploy makes <root>/review/<iid>/, review-stop removes it.
    install -d -m 0750 -o "$DEPLOY_USER" -g "$DEPLOY_USER" "$DEPLOY_ROOT/review"
    print_known_hosts
}

main "$@"
