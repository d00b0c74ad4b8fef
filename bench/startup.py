#!/usr/bin/env python3
"""Startup-to-ready time: process start -> first `200` from /readyz, repeated.

    python3 bench/startup.py --url http://127.0.0.1:P/readyz -n 20 -- portcullis --config c.toml

Each run spawns the command, then probes the URL over a fresh connection every millisecond (a
refused connection or a non-200 answer is retried) and stops the clock at the first 200. The
time to the first accepted TCP connection is noted too: the gap between the two is what the
process spends on its dependencies (OIDC discovery, JWKS, the store) after it listens. The
process is then stopped (SIGTERM) and its exit awaited before the next run, so each start is
cold as far as the process goes (the OS page cache is warm after the first).

Prints `listen_ms` and `ready_ms` as min / median / p90 / max over the runs.
"""

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse


def probe(host, port, path):
    """'refused', or the status of GET path."""
    try:
        c = http.client.HTTPConnection(host, port, timeout=2)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except (ConnectionRefusedError, socket.timeout, http.client.HTTPException, OSError):
        return "refused"


def one(cmd, host, port, path, timeout, log):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=log, stderr=log)
    listen = None
    try:
        while True:
            now = time.monotonic()
            if now - t0 > timeout:
                raise SystemExit(f"not ready after {timeout} s")
            if p.poll() is not None:
                raise SystemExit(f"the process exited ({p.returncode}) before it was ready")
            status = probe(host, port, path)
            if status != "refused" and listen is None:
                listen = time.monotonic() - t0
            if status == 200:
                return listen, time.monotonic() - t0
            time.sleep(0.001)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def summary(xs):
    xs = sorted(x * 1000 for x in xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"{xs[0]:.1f} / {statistics.median(xs):.1f} / {p90:.1f} / {xs[-1]:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--log", default="/dev/null", help="where the process's output goes")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    u = urllib.parse.urlsplit(a.url)
    listens, readies = [], []
    with open(a.log, "ab") as log:
        for _ in range(a.runs):
            listen, ready = one(cmd, u.hostname, u.port, u.path or "/", a.timeout, log)
            listens.append(listen)
            readies.append(ready)
    print(f"runs: {a.runs}")
    print(f"listen_ms (min / median / p90 / max): {summary(listens)}")
    print(f"ready_ms (min / median / p90 / max): {summary(readies)}")


if __name__ == "__main__":
    sys.exit(main())
