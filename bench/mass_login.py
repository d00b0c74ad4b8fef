#!/usr/bin/env python3
"""Many real logins, fast: each one is the full authorization-code flow a browser goes through.

    python3 bench/mass_login.py --gateway http://127.0.0.1:P --op http://127.0.0.1:Q -n 100000

Per login (a fresh browser as far as the gateway is concerned, no gateway cookie):
  1. GET  gateway /oauth2/start?rd=/      -> 302 to the OP's /authorize, sealed login cookie
  2. GET  OP /authorize?...               -> 302 to the gateway's callback with a code (the
                                             development OP's single sign-on cookie skips the
                                             form, as a real OP's SSO does after a first login)
  3. GET  gateway /oauth2/callback?code=  -> the gateway redeems the code at the OP's token
                                             endpoint, checks the ID token, stores a session and
                                             answers 302 with the session cookie
Each worker process signs in on the OP's form once (POST /authorize with the demo user), then
repeats 1-3 on keep-alive connections. Nothing is skipped on the gateway side: every session is
created by the same code path as a user's.

Prints one line: `logins: N failed: F seconds: S rate: R/s`; exits non-zero if any failed.
"""

import argparse
import http.client
import multiprocessing
import sys
import time
import urllib.parse

HEADERS = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none", "Accept": "text/html"}


class Conn:
    """A keep-alive HTTP/1.1 connection that reconnects when the server closed it."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def get(self, path, cookies=None, method="GET", body=None, extra=None):
        headers = dict(HEADERS)
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if extra:
            headers.update(extra)
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def set_cookies(response):
    out = {}
    for name, value in response.getheaders():
        if name.lower() == "set-cookie":
            pair = value.split(";", 1)[0]
            k, _, v = pair.partition("=")
            out[k.strip()] = v.strip()
    return out


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def worker(args):
    gateway, op, count, user, password, cookie_name = args
    gw, idp = Conn(gateway), Conn(op)
    op_cookies = {}
    ok = failed = 0
    first_error = ""
    for i in range(count):
        try:
            r = gw.get("/oauth2/start?rd=/")
            if r.status != 302:
                raise RuntimeError(f"/oauth2/start answered {r.status}")
            login_cookies = set_cookies(r)
            authorize = r.getheader("Location")
            if not op_cookies:
                # The first login of this worker signs in on the OP's form; the OP's SSO cookie
                # then answers every later /authorize at once.
                r = idp.get(path_of(authorize))
                if r.status != 200:
                    raise RuntimeError(f"OP /authorize answered {r.status} without a session")
                query = urllib.parse.urlsplit(authorize).query
                form = urllib.parse.parse_qsl(query) + [("username", user), ("password", password)]
                r = idp.get(
                    "/authorize",
                    method="POST",
                    body=urllib.parse.urlencode(form),
                    extra={"Content-Type": "application/x-www-form-urlencoded"},
                )
                op_cookies = set_cookies(r)
                if not op_cookies:
                    raise RuntimeError(f"OP form sign-in answered {r.status} without a cookie")
            else:
                r = idp.get(path_of(authorize), cookies=op_cookies)
            if r.status not in (302, 303):
                raise RuntimeError(f"OP /authorize answered {r.status}")
            callback = r.getheader("Location")
            r = gw.get(path_of(callback), cookies=login_cookies)
            got = set_cookies(r)
            if r.status not in (302, 303) or not got.get(cookie_name):
                raise RuntimeError(f"callback answered {r.status} without a session cookie")
            ok += 1
        except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
            failed += 1
            first_error = first_error or f"login {i}: {e}"
            gw, idp = Conn(gateway), Conn(op)
    return ok, failed, first_error


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateway", required=True)
    p.add_argument("--op", required=True)
    p.add_argument("-n", "--count", type=int, default=1000)
    p.add_argument("-p", "--procs", type=int, default=8)
    p.add_argument("--user", default="demo")
    p.add_argument("--password", default="demo")
    p.add_argument("--cookie-name", default="portcullis")
    a = p.parse_args()
    procs = max(1, min(a.procs, a.count))
    shares = [a.count // procs + (1 if i < a.count % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(worker, [(a.gateway, a.op, n, a.user, a.password, a.cookie_name) for n in shares])
    secs = time.monotonic() - t0
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    errors = [r[2] for r in results if r[2]]
    print(f"logins: {ok} failed: {failed} seconds: {secs:.1f} rate: {ok / secs:.0f}/s")
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
