#!/usr/bin/env bash
# Returns an environment to an earlier deploy: the images (by digest) and the content-named
# configs its deploy record names, through stackship deploy like any deploy, so a
# rollback that does not settle fails loudly (and is itself recorded when it succeeds).
#
# How: under the environment's deploy lock it copies the release in current/ to a temporary
# sibling directory, writes each config's old content back into its file (read from the swarm
# with `docker config inspect`: the prune keeps the configs of the last deploys), checks that
# config-hasher now gives exactly the recorded names, and runs that copy's stackship deploy with the
# recorded images as overrides (<SERVICE>_TAG=tag@sha256:... for the project's images, the
# <X>_IMAGE variable for third-party ones). What is not rolled back: secrets (a rotated password
# or a renewed certificate stays), the database, the stack file's structure (a service added since
# keeps its current image and configs), and current/ itself (the next copy step deploys the
# repository's files again).
set -Eeuo pipefail

# shellcheck source=scripts/server/ops-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ops-lib.sh"

usage() {
    cat <<'USAGE'
Usage: rollback.sh ENV [--to DEPLOY] [--list] [--dry-run]

Deploys ENV (dev or prod) as an earlier deploy ran it: its images and its configs.

  --list        the deploy records, newest first: id, images, configs (runs nothing)
  --to DEPLOY   the record to return to (an id from --list, or a unique prefix of one);
                default: the newest deploy whose images or configs differ from the last one
  --dry-run     show what would be deployed, deploy nothing

Runs on the manager from the release directory (<env dir>/current/, where the copy step puts
it) or from the repository with the deploy directory in /data/stackship/deploy/<env>. Registry
login as for stackship deploy (REGISTRY_USER/REGISTRY_PASSWORD, or the engine's existing login).
USAGE
}

# The plan (Python: JSON in, lines out): reads the history, the current release's config-hasher
# JSON and stack file, and prints what to deploy:
#   TARGET <id>              the record chosen
#   SET <VAR> <value>        an image override for stackship deploy
#   CONFIG <name> <file>...  write the content of config <name> to these files
#   EXPECT <VAR> <name>      config-hasher must then name VAR so
#   WARN <text>
# With --list: one line per record.
# shellcheck disable=SC2016  # Python
PLAN_PY='
import json, os, re, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

mode, history, release, compose, want, registry, existing = sys.argv[1:8]
# The configs that still exist in the swarm (the prune removes those of older deploys).
existing = set(existing.split())
records = []
for f in sorted(os.listdir(history)):
    if f.endswith(".json"):
        with open(os.path.join(history, f)) as fh:
            r = json.load(fh)
        r.setdefault("id", f[:-5])
        records.append(r)
records.sort(key=lambda r: r["id"])
if not records:
    sys.exit("no deploy records in %s" % history)

def state(r):
    return {s: (v.get("image", ""), tuple(sorted(v.get("configs", []))))
            for s, v in r.get("services", {}).items()}

def short(image):
    ref = image.split("@")[0]
    return ref.rsplit("/", 1)[-1]

last = records[-1]
default = next((r for r in reversed(records[:-1]) if state(r) != state(last)), None)

def pruned(r):
    return sorted({c for v in r.get("services", {}).values() for c in v.get("configs", [])} - existing)

if mode == "list":
    for r in reversed(records):
        mark = " (last deploy)" if r is last else (" (default rollback target)" if r is default else "")
        if r is not last and pruned(r):
            mark += " (configs pruned: cannot be restored)"
        svcs = r.get("services", {})
        images = " ".join("%s=%s" % (s, short(v.get("image", ""))) for s, v in sorted(svcs.items()))
        configs = " ".join(sorted({c for v in svcs.values() for c in v.get("configs", [])}))
        print("%s%s\n    images: %s\n    configs: %s" % (r["id"], mark, images, configs or "-"))
    sys.exit(0)

if want:
    matches = [r for r in records if r["id"] == want] or [r for r in records if r["id"].startswith(want)]
    if len(matches) != 1:
        sys.exit("deploy %r: %s (see --list)" % (want, "no such record" if not matches else "ambiguous, %d records match" % len(matches)))
    target = matches[0]
else:
    if default is None:
        sys.exit("no earlier deploy differs from the last one (%s): nothing to roll back to (see --list)" % last["id"])
    target = default
missing = pruned(target)
if missing:
    usable = [r["id"] for r in reversed(records[:-1]) if not pruned(r) and state(r) != state(last)][:3]
    sys.exit("deploy %s cannot be restored: its configs %s were pruned (the prune keeps those of the last PRUNE_KEEP deploys); %s"
             % (target["id"], " ".join(missing), "deploys that can: " + " ".join(usable) if usable else "no earlier deploy can be"))
print("TARGET", target["id"])
svcs = target.get("services", {})

# Images: the stack file names each service image through a variable.
services, current, in_services = {}, None, False
with open(os.path.join(release, compose)) as fh:
    for line in fh:
        if re.match(r"^\S", line):
            in_services = line.startswith("services:")
            current = None
            continue
        if not in_services:
            continue
        m = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
        if m:
            current = m.group(1)
            services[current] = None
            continue
        m = re.match(r"^    image:\s*(.+?)\s*$", line)
        if m and current:
            services[current] = m.group(1).strip("\"\x27")
for name, expr in sorted(services.items()):
    if name not in svcs:
        print("WARN", "service %s was not part of deploy %s: it keeps its current image and configs" % (name, target["id"]))
        continue
    image = svcs[name].get("image", "")
    m = re.match(r"^\$\{REGISTRY\}/(.+):\$\{([A-Z0-9_]+)\}$", expr or "")
    if m:
        ref = re.match(r"^([^@]+):([^:@/]+(@sha256:[0-9a-f]{64})?)$", image)
        if not ref:
            sys.exit("deploy %s: the image of %s, %r, has no tag" % (target["id"], name, image))
        repo, rest = ref.group(1), ref.group(2)
        if registry and repo != "%s/%s" % (registry, m.group(1)):
            sys.exit("deploy %s ran %s from %s, not from this environment'"'"'s registry %s" % (target["id"], name, repo, registry))
        print("SET", m.group(2), rest)
        continue
    m = re.match(r"^\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}$", expr or "")
    if m:
        print("SET", m.group(1), image)
        continue
    print("WARN", "service %s names a fixed image (%s): not rolled back" % (name, expr))
for name in sorted(set(svcs) - set(services)):
    print("WARN", "service %s of deploy %s is not in the current stack file: not restored" % (name, target["id"]))

# Configs: match each of the release'"'"'s content-named configs to the recorded one with the same
# prefix (name = <prefix>_<hash>).
recorded = {}
for v in svcs.values():
    for c in v.get("configs", []):
        recorded[c.rsplit("_", 1)[0]] = c
hasher = json.load(sys.stdin)
for e in hasher.get("entries", []):
    kinds = {s.get("kind") for s in e.get("sources", [])}
    if kinds != {"config"}:
        continue
    prefix = e["name"].rsplit("_", 1)[0]
    old = recorded.get(prefix)
    if old is None:
        print("WARN", "config %s was not part of deploy %s: it keeps its current content" % (e["variable"], target["id"]))
        continue
    if old != e["name"]:
        print("CONFIG", old, *[s["file"] for s in e["sources"]])
    print("EXPECT", e["variable"], old)
'

main() {
    local env="" to="" list="" dry_run="" release work plan kind a b rest name file data
    local -a sets=() expects=() files=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --to) [[ $# -ge 2 && -n "$2" ]] || die "--to needs a deploy id (see --list)"; to="$2"; shift ;;
            --list) list=1 ;;
            --dry-run) dry_run=1 ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) [[ -z "$env" ]] || die "give one environment (got '${env}' and '$1')"; env="$1" ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing the environment (dev or prod)"; }
    need python3 "apt-get install python3"
    ops_env "$env"
    release="${OPS_ENV_DIR}/current"
    [[ -x "$release/stackship" && -x "$release/config-hasher" ]] \
        || die "no ${env} release in ${release} (run the copy step for ${env} first)"
    [[ -d "${OPS_ENV_DIR}/history" ]] || die "no deploy records in ${OPS_ENV_DIR}/history: nothing to roll back to"
    if [[ -n "$list" ]]; then
        # A reader that stops early (`| head`, `| grep -q`) closes the pipe: the listing ends
        # there (SIGPIPE, exit 141) and that is a success, as with git log or ls.
        local rc=0 names
        names="$(config_names)"
        python3 -c "$PLAN_PY" list "${OPS_ENV_DIR}/history" "$release" "docker-compose.${env}.yaml" "" "" "$names" </dev/null \
            || rc=$?
        ((rc == 0 || rc == 141)) || die "cannot read the deploy records in ${OPS_ENV_DIR}/history"
        return 0
    fi

    ops_lock
    # A copy of the release beside current/, so stackship finds the environment directory (its
    # settings, lock, records) as its parent and relative paths (../secrets) still resolve.
    work="$(mktemp -d "${OPS_ENV_DIR}/.rollback.XXXXXX")"
    ops_on_exit "rm -rf '${work}'"
    cp -a "$release/." "$work/"
    plan="$(cd "$work" && ./config-hasher "--${env}" --format json \
        | python3 -c "$PLAN_PY" plan "${OPS_ENV_DIR}/history" "$work" "docker-compose.${env}.yaml" "$to" "$(registry)" "$(config_names)")" \
        || die "cannot plan the rollback (see above)"
    while read -r kind a b rest; do
        case "$kind" in
            TARGET) log "rolling ${OPS_STACK} back to deploy ${a}" ;;
            WARN) warn "${a} ${b} ${rest}" ;;
            SET) sets+=("${a}=${b}"); log "image: ${a}=${b}" ;;
            EXPECT) expects+=("${a}=${b}") ;;
            CONFIG)
                name="$a"
                read -r -a files <<<"$b $rest"
                data="$(docker config inspect "$name" --format '{{json .Spec.Data}}' 2>/dev/null)" \
                    || die "config ${name} no longer exists (pruned; PRUNE_KEEP deploys keep theirs): cannot roll back to it"
                for file in "${files[@]}"; do
                    [[ "$file" != /* && "$file" != *..* ]] || die "config ${name}: unexpected source path '${file}'"
                    python3 -c 'import base64, json, sys; sys.stdout.buffer.write(base64.b64decode(json.loads(sys.argv[1])))' \
                        "$data" > "$work/$file" || die "cannot write config ${name} into ${file}"
                    log "config: ${file} <- ${name}"
                done
                ;;
            *) die "unexpected plan line: ${kind} ${a} ${b} ${rest}" ;;
        esac
    done <<<"$plan"
    check_names "$work" "$env" "${expects[@]}"
    if [[ -n "$dry_run" ]]; then
        log "dry run: would run stackship deploy ${env} with ${sets[*]}"
        return 0
    fi
    log "stackship deploy ${env} (rollback)"
    env "${sets[@]}" STACKSHIP_DEPLOY_LOCK_FD=9 "$work/stackship" deploy "$env" --release "$work" \
        || die "the rollback of ${OPS_STACK} FAILED (see above; report: ${OPS_ENV_DIR}/last-rollout.json)"
    log "${OPS_STACK} rolled back"
}

# config_names: every config in the swarm, one line each.
config_names() { docker config ls --format '{{.Name}}' || die "docker config ls failed"; }

# registry: the registry stackship deploy will use (environment, deploy.env, CI variable), or empty.
registry() {
    local value="${REGISTRY:-}"
    if [[ -z "$value" && -f "${OPS_ENV_DIR}/deploy.env" ]]; then
        value="$(sed -n 's/^REGISTRY=//p' "${OPS_ENV_DIR}/deploy.env" | tail -n 1)"
    fi
    printf '%s\n' "${value:-${CI_REGISTRY:-}}"
}

# check_names DIR ENV VAR=NAME...: config-hasher names every config as the record does.
check_names() {
    local dir="$1" env="$2" pair got
    shift 2
    got="$(cd "$dir" && ./config-hasher "--${env}")" || die "config-hasher failed on the rolled-back files"
    for pair in "$@"; do
        grep -qxF "$pair" <<<"$got" \
            || die "after writing the old configs back, config-hasher gives $(grep "^${pair%%=*}=" <<<"$got"), not ${pair}: refusing to deploy"
    done
}

main "$@"
