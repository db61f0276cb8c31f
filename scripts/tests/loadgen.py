#!/usr/bin/env python3
"""Bounded HTTP load through the proxy, for rollout tests: counts every failed request.

A mix of GET /api/service/version, GET /api/logs and POST /api/log at a fixed total rate,
half the workers on keep-alive connections and half opening a new connection per request.
Like a browser or urllib3, a keep-alive worker does not reuse a connection the server closed
while it was idle.
Runs until the stop file is removed *and* at least --min-requests were sent, or until
--max-seconds, whichever comes first. Targets only the URL it is given (loopback here).

Writes a JSON report: requests, failed (non-2xx and network errors, by kind), the versions
seen over time, and the acknowledged log rows (id and message) so a caller can check that
none was lost. --kinds narrows the mix (a write load: --kinds post); --trace writes one JSON
line per POST (when it was sent and answered, its status, the id or the error code returned).
"""

import argparse
import http.client
import json
import os
import select
import ssl
import threading
import time
import urllib.parse

MIX = (("version", 4), ("logs", 3), ("post", 3))


def dropped(sock):
    """True when an idle connection's socket is readable: the server closed it (EOF) or sent
    something unasked; either way it cannot carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the URL's host, asking for (SNI) and checking the certificate of another name:
    a certificate for a test domain, served on this machine."""

    def __init__(self, host, port, server_name, **kwargs):
        super().__init__(host, port, **kwargs)
        self.server_name = server_name

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)


class Worker(threading.Thread):
    def __init__(self, n, args, shared):
        super().__init__(daemon=True)
        self.n = n
        self.args = args
        self.shared = shared
        self.keepalive = n % 2 == 0
        self.conn = None
        self.seq = 0
        self.requests = 0
        self.failed = {}
        self.versions = []
        self.acked = []
        self.failure_times = []
        self.trace = []

    def connection(self):
        u = self.shared["url"]
        if self.conn is not None and self.conn.sock is not None and dropped(self.conn.sock):
            # As browsers and urllib3 do: a keep-alive connection the server has closed while it
            # sat idle (a keep-alive timeout, a proxy stopping gracefully) is not used again.
            self.conn.close()
            self.conn = None
        if self.conn is None:
            if u.scheme == "https":
                name = self.args.server_name
                if name:
                    self.conn = NamedHTTPSConnection(
                        u.hostname, u.port or 443, name, timeout=10, context=self.shared["ssl"])
                else:
                    self.conn = http.client.HTTPSConnection(
                        u.hostname, u.port or 443, timeout=10, context=self.shared["ssl"])
            else:
                self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
        return self.conn

    def request(self, kind):
        self.seq += 1
        headers = {"Connection": "keep-alive" if self.keepalive else "close"}
        body = None
        if kind == "version":
            method, path = "GET", "/api/service/version"
        elif kind == "logs":
            method, path = "GET", "/api/logs?limit=5"
        else:
            method, path = "POST", "/api/log"
            message = "load %s w%d #%d" % (self.shared["run"], self.n, self.seq)
            body = json.dumps({"message": message})
            headers["Content-Type"] = "application/json"
        conn = self.connection()
        sent = time.time()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            if not self.keepalive or resp.will_close:
                conn.close()
                self.conn = None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.conn = None
            if kind == "post" and self.args.trace:
                self.trace.append({"sent": sent, "answered": time.time(), "status": None,
                                   "message": message, "id": None, "code": None,
                                   "error": type(e).__name__})
            return "error:%s" % type(e).__name__, None
        if kind == "post" and self.args.trace:
            entry = {"sent": sent, "answered": time.time(), "status": status,
                     "message": message, "id": None, "code": None, "error": None}
            try:
                body_json = json.loads(data)
                if 200 <= status < 300:
                    entry["id"] = body_json.get("id")
                else:
                    entry["code"] = (body_json.get("error") or {}).get("code")
            except (ValueError, AttributeError):
                entry["error"] = "bad_body"
            self.trace.append(entry)
        if 200 <= status < 300:
            if kind == "version":
                try:
                    self.versions.append((time.time(), json.loads(data)["version"]))
                except (ValueError, KeyError):
                    return "bad_body", None
            elif kind == "post":
                try:
                    row = json.loads(data)
                    self.acked.append((row["id"], row["message"]))
                except (ValueError, KeyError):
                    return "bad_body", None
            return None, status
        return "http_%d" % status, status

    def run(self):
        rate = self.shared["rate"] / self.args.workers
        interval = 1.0 / rate
        weights = [k for k, w in MIX if k in self.args.kinds for _ in range(w)]
        next_at = time.monotonic() + (self.n * interval / self.args.workers)
        while True:
            now = time.monotonic()
            if self.shared["done"](now):
                break
            if next_at > now:
                time.sleep(next_at - now)
            # After a slow request, resume the pace instead of bursting to catch up.
            next_at = max(next_at + interval, time.monotonic() - interval)
            kind = weights[(self.seq + self.n) % len(weights)]
            sent = time.time()
            failure, _ = self.request(kind)
            self.requests += 1
            with self.shared["lock"]:
                self.shared["total"] += 1
            if failure:
                self.failed[failure] = self.failed.get(failure, 0) + 1
                # When it was sent: a request sent before an event and answered after it
                # (a timeout, say) failed because of what happened before.
                self.failure_times.append(sent)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base URL, e.g. https://localhost")
    p.add_argument("--cacert", help="CA file for https")
    p.add_argument("--server-name",
                   help="the name the https certificate must be for (default: the URL's host)")
    p.add_argument("--rate", type=float, default=200.0, help="total requests per second")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--min-requests", type=int, default=10000)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--stop-file", help="keep going while this file exists")
    p.add_argument("--run", default=str(os.getpid()), help="tag of this run's log messages")
    p.add_argument("--out", required=True, help="JSON report file")
    p.add_argument("--kinds", default="version,logs,post",
                   help="comma-separated request kinds of the mix (version, logs, post)")
    p.add_argument("--trace", help="JSON lines file: one line per POST, as it was answered")
    args = p.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not args.kinds or any(k not in dict(MIX) for k in args.kinds):
        p.error("--kinds takes version, logs and post")

    url = urllib.parse.urlparse(args.url)
    if url.hostname not in ("localhost", "127.0.0.1", "::1"):
        p.error("the load generator only targets this machine (localhost)")
    ctx = ssl.create_default_context(cafile=args.cacert) if url.scheme == "https" else None
    start = time.monotonic()
    shared = {"url": url, "ssl": ctx, "rate": args.rate, "run": args.run,
              "lock": threading.Lock(), "total": 0}

    def done(now):
        if now - start >= args.max_seconds:
            return True
        stop_gone = not args.stop_file or not os.path.exists(args.stop_file)
        return stop_gone and shared["total"] >= args.min_requests

    shared["done"] = done
    workers = [Worker(n, args, shared) for n in range(args.workers)]
    t0 = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.time() - t0

    failed = {}
    for w in workers:
        for k, v in w.failed.items():
            failed[k] = failed.get(k, 0) + v
    versions = sorted(v for w in workers for v in w.versions)
    # One span per version: first and last answer, and how many (during a start-first
    # update both versions answer side by side, so a list of flips would be long).
    spans = {}
    for t, v in versions:
        span = spans.setdefault(v, {"version": v, "at": round(t - t0, 2), "count": 0})
        span["until"] = round(t - t0, 2)
        span["count"] += 1
    timeline = sorted(spans.values(), key=lambda s: s["at"])
    failure_times = sorted(t for w in workers for t in w.failure_times)
    report = {
        "requests": sum(w.requests for w in workers),
        "failed": sum(failed.values()),
        "failed_by_kind": failed,
        "seconds": round(elapsed, 2),
        "rate": round(sum(w.requests for w in workers) / elapsed, 1) if elapsed else 0,
        "versions_over_time": timeline,
        "first_failure_at": round(failure_times[0] - t0, 3) if failure_times else None,
        "last_failure_at": round(failure_times[-1] - t0, 3) if failure_times else None,
        # When the load began (seconds since the epoch) and every failure since then.
        "started_at": round(t0, 3),
        "failures_at": [round(t - t0, 3) for t in failure_times],
        "acked_rows": [[i, m] for w in workers for i, m in w.acked],
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    if args.trace:
        with open(args.trace, "w") as f:
            for entry in sorted((e for w in workers for e in w.trace), key=lambda e: e["sent"]):
                f.write(json.dumps(entry) + "\n")
    print("%d requests in %.1fs (%.0f/s), %d failed %s; versions %s" % (
        report["requests"], elapsed, report["rate"], report["failed"], failed,
        ", ".join("%s %.1f-%.1fs" % (x["version"], x["at"], x["until"]) for x in timeline)))


if __name__ == "__main__":
    main()
