#!/usr/bin/env python3
"""Checks that every service of a running stack is hardened, from what Docker reports.

Used by scripts/tests/stack-hardening.sh. For each service of the stack it reads `docker service
inspect`, `docker inspect` of the service's running containers on this node and, for every
process in them, /proc/<pid>/status (this runs as root on the swarm node), and reports each
property that is missing:

- a non-root user: in the spec, in the container's config, and the real, effective, saved and
  filesystem uid and gid of every process;
- a read-only root filesystem (spec and container);
- no capabilities: cap_drop ALL, nothing added (CAP_ADD_ALLOWED), and an empty effective,
  permitted and bounding set in every process;
- memory, CPU and pids limits (spec and container);
- a healthcheck in the spec, and the container healthy;
- no published port, except the ports given for a service (host mode, unprivileged target);
- no mount of the Docker socket or the directories that hold it;
- the image the deploy script says it deploys: a pinned repo:tag@sha256:... exactly, a
  project image as its tag resolved to a digest.

Usage:
  hardening_check.py check STACK --images FILE [--publish SERVICE=PORT,PORT]...
  hardening_check.py selftest STACK --images FILE [--publish SERVICE=PORT,PORT]...

FILE holds `deploy.sh --print-images` output (`<service> <image> (<source>)` lines). `check`
prints one line per finding and exits 1 when there is any. `selftest` takes the real facts of
every service, removes one property at a time, and exits 1 unless each removal is reported (and
the untouched facts are not): every check can fail.
"""

import argparse
import copy
import json
import subprocess
import sys

# Capabilities a service may add back, by service name. None needs any: the proxy listens on
# unprivileged ports, Postgres starts as its own user, nothing changes owners or binds below 1024.
CAP_ADD_ALLOWED = {}
# Host paths whose mount would hand a container the Docker engine.
DOCKER_PATHS = ("/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run", "/var/lib/docker", "/")


def docker_json(*args):
    out = subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def proc_status(pid):
    """The Uid, Gid and capability lines of /proc/<pid>/status, or None if it has exited."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Name", "Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd"):
                    fields[key] = value.split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields


def collect(service):
    """What Docker reports about one service and its running containers on this node."""
    spec = docker_json("service", "inspect", service)[0]
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
         "--filter", "status=running"],
        check=True, capture_output=True, text=True).stdout.split()
    containers = docker_json("inspect", *ids) if ids else []
    for c in containers:
        top = subprocess.run(["docker", "top", c["Id"], "-eo", "pid"], check=True,
                             capture_output=True, text=True).stdout.split()[1:]
        procs = {}
        for pid in top:
            status = proc_status(pid)
            if status is not None:
                procs[pid] = status
        c["_procs"] = procs
    return {"service": spec, "containers": containers}


def is_root(user):
    """True for an empty user (the image's, root by default), root or uid 0, or group root."""
    name, _, group = (user or "").partition(":")
    return name in ("", "root", "0") or group in ("root", "0")


def short_name(stack, service_name):
    prefix = f"{stack}_"
    return service_name[len(prefix):] if service_name.startswith(prefix) else service_name


def violations(stack, facts, images, publish, digests=None):
    """Every hardening property the service lacks, one sentence each. `images`: service ->
    the image deploy.sh deploys; `digests`: image -> the digests the registry gave it."""
    found = []
    svc = facts["service"]
    name = short_name(stack, svc["Spec"]["Name"])
    task = svc["Spec"]["TaskTemplate"]
    cs = task["ContainerSpec"]

    def bad(msg):
        found.append(f"{name}: {msg}")

    # User.
    if is_root(cs.get("User")):
        bad(f"spec user is '{cs.get('User', '')}' (root or the image default)")
    # Read-only root filesystem.
    if not cs.get("ReadOnly"):
        bad("spec root filesystem is writable (read_only not set)")
    # Capabilities.
    drop = cs.get("CapabilityDrop") or []
    add = cs.get("CapabilityAdd") or []
    if "ALL" not in drop:
        bad(f"spec does not drop ALL capabilities (cap_drop {drop})")
    extra = sorted(set(add) - set(CAP_ADD_ALLOWED.get(name, ())))
    if extra:
        bad(f"spec adds capabilities {extra}")
    # Limits.
    limits = (task.get("Resources") or {}).get("Limits") or {}
    for key in ("MemoryBytes", "NanoCPUs", "Pids"):
        if not limits.get(key):
            bad(f"spec has no {key} limit")
    # Healthcheck.
    test = (cs.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        bad("spec has no healthcheck")
    # Ports.
    want_ports = set(publish.get(name, ()))
    ports = (svc["Spec"].get("EndpointSpec") or {}).get("Ports") or []
    published = {p.get("PublishedPort") for p in ports}
    if published != want_ports:
        bad(f"publishes {sorted(published)}, expected {sorted(want_ports)}")
    for p in ports:
        if p.get("PublishMode") != "host":
            bad(f"port {p.get('PublishedPort')} is not published in host mode")
        if p.get("TargetPort", 0) < 1024:
            bad(f"port {p.get('PublishedPort')} targets privileged port {p.get('TargetPort')} in the container")
    # Docker socket.
    for m in cs.get("Mounts") or []:
        if "docker.sock" in (m.get("Source", "") + m.get("Target", "")) or (
                m.get("Type") == "bind" and m.get("Source", "").rstrip("/") in DOCKER_PATHS + ("",)):
            bad(f"spec mounts {m.get('Source')} at {m.get('Target')}")
    # Image.
    image = cs.get("Image", "")
    want = images.get(name)
    if want is None:
        bad(f"runs {image}, which deploy.sh does not list (a third-party image must be pinned by digest)")
    elif "@sha256:" in want:
        if image != want:
            bad(f"runs {image}, not the pinned {want}")
    elif not image.startswith(want + "@sha256:"):
        bad(f"runs {image}, not {want} resolved to a digest")
    elif image.split("@")[1] not in (digests or {}).get(want, ()):
        bad(f"runs {image}, a digest the registry did not give {want}")

    # The running containers.
    containers = facts["containers"]
    if not containers:
        bad("no running container on this node to inspect")
    for c in containers:
        cid = c["Id"][:12]
        hc = c["HostConfig"]
        if is_root(c["Config"].get("User")):
            bad(f"container {cid} user is '{c['Config'].get('User', '')}'")
        if not hc.get("ReadonlyRootfs"):
            bad(f"container {cid} root filesystem is writable")
        if "ALL" not in (hc.get("CapDrop") or []):
            bad(f"container {cid} does not drop ALL capabilities")
        cextra = sorted(set(hc.get("CapAdd") or []) - set(CAP_ADD_ALLOWED.get(name, ())))
        if cextra:
            bad(f"container {cid} adds capabilities {cextra}")
        for key in ("Memory", "NanoCpus", "PidsLimit"):
            if not hc.get(key) or hc.get(key) < 0:
                bad(f"container {cid} has no {key} limit")
        health = (c["State"].get("Health") or {}).get("Status")
        if health != "healthy":
            bad(f"container {cid} health is {health}")
        bound = set()
        for bindings in (hc.get("PortBindings") or {}).values():
            for b in bindings or []:
                bound.add(int(b.get("HostPort") or 0))
        if bound != want_ports:
            bad(f"container {cid} binds host ports {sorted(bound)}, expected {sorted(want_ports)}")
        for m in c.get("Mounts") or []:
            src, dst = m.get("Source", ""), m.get("Destination", "")
            if "docker.sock" in src + dst or (m.get("Type") == "bind" and src.rstrip("/") in DOCKER_PATHS + ("",)):
                bad(f"container {cid} mounts {src} at {dst}")
        procs = c.get("_procs") or {}
        if not procs:
            bad(f"container {cid}: no process found to check")
        for pid, st in procs.items():
            what = f"container {cid} process {pid} ({st.get('Name', ['?'])[0]})"
            if "0" in st.get("Uid", ["0"]):
                bad(f"{what} runs with uid {' '.join(st.get('Uid', []))} (real effective saved fs)")
            if "0" in st.get("Gid", ["0"]) or "0" in st.get("Groups", []):
                bad(f"{what} runs with gid {' '.join(st.get('Gid', []))}, groups {' '.join(st.get('Groups', []))}")
            for key in ("CapEff", "CapPrm", "CapBnd"):
                if int(st.get(key, ["ffff"])[0], 16) != 0:
                    bad(f"{what} has capabilities {key}={st.get(key, ['?'])[0]}")
    return found


# Each mutation removes one property from real facts; the checker must report it (the text
# it must mention).
def _spec(f):
    return f["service"]["Spec"]["TaskTemplate"]["ContainerSpec"]


def _containers(f):
    return f["containers"]


def _first_proc(f):
    return next(iter(f["containers"][0]["_procs"].values()))


MUTATIONS = {
    "spec user root": (lambda f: _spec(f).__setitem__("User", "0:0"), "spec user"),
    "spec user unset": (lambda f: _spec(f).pop("User", None), "spec user"),
    "spec writable": (lambda f: _spec(f).pop("ReadOnly", None), "spec root filesystem"),
    "spec keeps capabilities": (lambda f: _spec(f).__setitem__("CapabilityDrop", ["NET_RAW"]), "drop ALL"),
    "spec adds a capability": (lambda f: _spec(f).__setitem__("CapabilityAdd", ["NET_BIND_SERVICE"]), "adds capabilities"),
    "no memory limit": (lambda f: f["service"]["Spec"]["TaskTemplate"]["Resources"]["Limits"].pop("MemoryBytes", None), "MemoryBytes"),
    "no cpu limit": (lambda f: f["service"]["Spec"]["TaskTemplate"]["Resources"]["Limits"].pop("NanoCPUs", None), "NanoCPUs"),
    "no pids limit": (lambda f: f["service"]["Spec"]["TaskTemplate"]["Resources"]["Limits"].pop("Pids", None), "Pids"),
    "no healthcheck": (lambda f: _spec(f).pop("Healthcheck", None), "healthcheck"),
    "healthcheck NONE": (lambda f: _spec(f).__setitem__("Healthcheck", {"Test": ["NONE"]}), "healthcheck"),
    "publishes a port": (lambda f: f["service"]["Spec"].setdefault("EndpointSpec", {}).setdefault("Ports", []).append(
        {"Protocol": "tcp", "TargetPort": 5432, "PublishedPort": 5432, "PublishMode": "host"}), "publishes"),
    "ingress port": (lambda f: f["service"]["Spec"].setdefault("EndpointSpec", {}).setdefault("Ports", []).append(
        {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 9999, "PublishMode": "ingress"}), "host mode"),
    "privileged target": (lambda f: f["service"]["Spec"].setdefault("EndpointSpec", {}).setdefault("Ports", []).append(
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 9998, "PublishMode": "host"}), "privileged port"),
    "spec mounts docker.sock": (lambda f: _spec(f).setdefault("Mounts", []).append(
        {"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}), "docker.sock"),
    "spec mounts /run": (lambda f: _spec(f).setdefault("Mounts", []).append(
        {"Type": "bind", "Source": "/run", "Target": "/host-run"}), "/host-run"),
    "floating image": (lambda f: _spec(f).__setitem__("Image", _spec(f)["Image"].split("@")[0]), "runs "),
    "other digest": (lambda f: _spec(f).__setitem__("Image", _spec(f)["Image"].split("@")[0] + "@sha256:" + "0" * 64), "runs "),
    "container user root": (lambda f: _containers(f)[0]["Config"].__setitem__("User", "root"), "user is"),
    "container writable": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("ReadonlyRootfs", False), "root filesystem is writable"),
    "container keeps capabilities": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("CapDrop", None), "does not drop ALL"),
    "container adds a capability": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("CapAdd", ["CHOWN"]), "adds capabilities"),
    "container no memory limit": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("Memory", 0), "Memory limit"),
    "container no cpu limit": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("NanoCpus", 0), "NanoCpus"),
    "container no pids limit": (lambda f: _containers(f)[0]["HostConfig"].__setitem__("PidsLimit", None), "PidsLimit"),
    "container unhealthy": (lambda f: _containers(f)[0]["State"].__setitem__("Health", {"Status": "unhealthy"}), "health is"),
    "container binds a port": (lambda f: _containers(f)[0]["HostConfig"].setdefault("PortBindings", {}).__setitem__(
        "5432/tcp", [{"HostIp": "", "HostPort": "15432"}]), "binds host ports"),
    "container mounts docker.sock": (lambda f: _containers(f)[0].setdefault("Mounts", []).append(
        {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/docker.sock"}), "docker.sock"),
    "process uid 0": (lambda f: _first_proc(f).__setitem__("Uid", ["999", "0", "999", "999"]), "uid"),
    "process gid 0": (lambda f: _first_proc(f).__setitem__("Gid", ["0", "0", "0", "0"]), "gid"),
    "process group root": (lambda f: _first_proc(f).__setitem__("Groups", ["0"]), "groups 0"),
    "spec group root": (lambda f: _spec(f).__setitem__("User", "4242:0"), "spec user"),
    "process CapEff": (lambda f: _first_proc(f).__setitem__("CapEff", ["0000000000000400"]), "CapEff"),
    "process CapBnd": (lambda f: _first_proc(f).__setitem__("CapBnd", ["00000000a80425fb"]), "CapBnd"),
    "no processes": (lambda f: _containers(f)[0].__setitem__("_procs", {}), "no process"),
    "no containers": (lambda f: f.__setitem__("containers", []), "no running container"),
}


def stack_services(stack):
    out = subprocess.run(["docker", "stack", "services", stack, "--format", "{{.Name}}"],
                         check=True, capture_output=True, text=True).stdout.split()
    return sorted(out)


def parse_images(path):
    images = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                images[parts[0]] = parts[1]
    return images


def registry_digests(images):
    """For each project image (a tag, no digest): the digests its registry gave it, as the local
    engine recorded them when it pulled or pushed it."""
    digests = {}
    for want in images.values():
        if "@" in want:
            continue
        out = subprocess.run(["docker", "image", "inspect", "--format",
                              "{{range .RepoDigests}}{{println .}}{{end}}", want],
                             capture_output=True, text=True).stdout.split()
        digests[want] = {d.split("@")[1] for d in out if "@" in d}
    return digests


def parse_publish(values):
    publish = {}
    for v in values or []:
        svc, _, ports = v.partition("=")
        publish[svc] = [int(p) for p in ports.split(",") if p]
    return publish


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("check", "selftest"))
    ap.add_argument("stack")
    ap.add_argument("--images", required=True)
    ap.add_argument("--publish", action="append")
    args = ap.parse_args()
    images = parse_images(args.images)
    publish = parse_publish(args.publish)
    services = stack_services(args.stack)
    if not services:
        print(f"{args.stack}: no services", file=sys.stderr)
        return 1
    facts = {s: collect(s) for s in services}
    digests = registry_digests(images)
    if args.mode == "check":
        found = [v for s in services for v in violations(args.stack, facts[s], images, publish, digests)]
        for v in found:
            print(v)
        print(f"{args.stack}: {len(services)} services checked, {len(found)} findings", file=sys.stderr)
        return 1 if found else 0
    # selftest: every mutation of every service's facts is reported; the facts as they are not.
    failures = 0
    for s in services:
        clean = violations(args.stack, facts[s], images, publish, digests)
        if clean:
            print(f"{s}: the real facts already have findings: {clean}")
            failures += 1
            continue
        for label, (mutate, needle) in MUTATIONS.items():
            f = copy.deepcopy(facts[s])
            mutate(f)
            found = violations(args.stack, f, images, publish, digests)
            if not any(needle in v for v in found):
                print(f"{s}: '{label}' is not reported (findings: {found})")
                failures += 1
    print(f"{args.stack}: {len(MUTATIONS)} mutations x {len(services)} services", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
