#!/usr/bin/env python3
"""A stand-in for the GitLab API's note endpoint, for the tests only (scripts/tests/test-pipeline.sh,
scripts/tests/test-ssh-deploy.sh).

Serves on 127.0.0.1 on a free port, written to WORK/port; records every POST (method, path,
headers, body) as a JSON line in WORK/requests.jsonl; answers with the status in WORK/status
(201 when absent). Its error answers echo the request headers, as a careless proxy might, so a
test can check that the token is not shown from them.

Usage: fake-gitlab-api.py WORK
"""
import http.server
import json
import os
import sys


def make_handler(work):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            headers = dict(self.headers.items())
            record = {"method": self.command, "path": self.path, "headers": headers, "body": body}
            with open(os.path.join(work, "requests.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            try:
                with open(os.path.join(work, "status")) as f:
                    status = int(f.read().strip())
            except FileNotFoundError:
                status = 201
            answer = {"id": 1} if status < 300 else {"message": "refused", "echo": headers}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    server = http.server.HTTPServer(("127.0.0.1", 0), make_handler(work))
    with open(os.path.join(work, "port.tmp"), "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place: a reader never sees a half-written port.
    os.rename(os.path.join(work, "port.tmp"), os.path.join(work, "port"))
    server.serve_forever()


if __name__ == "__main__":
    main()
