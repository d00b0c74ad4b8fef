#!/usr/bin/env python3
"""Where a proxy's CPU time goes, from `perf script -F comm,tid,ip,sym,dso` on stdin (or a file).

Used by bench/proxy.sh (BENCH_PERF=1). Every sample is a stack, leaf first. Prints:
  * self time by bucket: the kernel split by what the thread was doing (socket writes, which on
    loopback include delivering the data to the peer, reads, epoll, futex, scheduler), glibc's
    allocator, libc mem*/str*, and user code by crate (or by binary when there are no symbols);
  * inclusive time of named frames (Portcullis' layers, hyper's parsers and client, syscalls);
  * the top user-space leaf functions.
Percentages are of all samples of the profiled process(es); with `--us-per-req X` (the
process's CPU time per request during the profile) each line also gets µs per request.
"""
import collections
import re
import sys


def samples(lines):
    cur = []
    for line in lines:
        if not line.strip():
            if cur:
                yield cur
            cur = []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                cur.append(parts[1])
        else:
            cur = []
    if cur:
        yield cur


def name_of(frame):
    return frame.rsplit(" (", 1)[0]


def dso_of(frame):
    m = re.search(r"\(([^()]*)\)$", frame)
    return m.group(1).rsplit("/", 1)[-1] if m else "?"


MALLOC = re.compile(
    r"^(malloc|_int_malloc|_int_free|_int_free_merge_chunk|_int_free_create_chunk|cfree|free|__libc_free|"
    r"malloc_consolidate|unlink_chunk|realloc|_int_realloc|__libc_calloc|calloc|__libc_malloc|tcache_\w+|"
    r"sysmalloc|__GI___libc_free|__GI___libc_malloc|__GI___libc_realloc)\b"
)
MEM = re.compile(r"^__(memmove|memcpy|memset|memcmp|memchr|strlen|strchr|strcmp|mempcpy)")
CRATE = re.compile(r"^<?(?:&(?:mut )?)?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::")
STD = {"core", "alloc", "std"}


def kernel_bucket(names):
    s = " ".join(names)
    if "__schedule" in s or "finish_task_switch" in s:
        return "kernel: scheduler (context switch, preemption)"
    if any(k in s for k in ("do_writev", "__sys_sendto", "__sys_sendmsg", "sock_write_iter", "ksys_write", "do_sendfile")):
        return "kernel: socket writes (on loopback incl. delivery to the peer)"
    if any(k in s for k in ("__sys_recvfrom", "ksys_read", "do_readv", "sock_read_iter", "tcp_recvmsg")):
        return "kernel: socket reads"
    if "ep_poll" in s or "epoll_wait" in s or "do_epoll" in s:
        return "kernel: epoll"
    if "futex" in s:
        return "kernel: futex (thread wake/park)"
    if "accept" in s:
        return "kernel: accept"
    if any(k in s for k in ("asm_sysvec", "irqentry", "apic_timer", "handle_softirqs")):
        return "kernel: interrupts/softirq"
    return "kernel: other"


def user_bucket(stack):
    names = [name_of(f) for f in stack]
    leaf = names[0]
    if MALLOC.match(leaf):
        return "glibc malloc/free"
    if MEM.match(leaf):
        return "libc mem*/str*"
    m = CRATE.match(leaf)
    if not m:
        return f"user: {dso_of(stack[0])} (no crate)"
    crate = m.group(1)
    if crate in STD:
        for n in names[1:]:
            m2 = CRATE.match(n)
            if m2 and m2.group(1) not in STD:
                return f"user: {m2.group(1)} (via std/core)"
    return f"user: {crate}"


INCLUSIVE = [
    ("socket writes: writev/send/write syscalls", r"^(do_writev|__sys_sendto|__sys_sendmsg|ksys_write|do_sendfile)$"),
    ("socket reads: recv/read syscalls", r"^(__sys_recvfrom|ksys_read|do_readv)$"),
    ("epoll_wait", r"^(do_epoll_wait|ep_poll)$"),
    ("futex", r"^(do_futex|__x64_sys_futex)$"),
    ("glibc malloc/free", MALLOC.pattern),
    ("hyper server: parse request", r"hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"),
    ("hyper server: encode response", r"hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode"),
    ("hyper client: encode upstream request", r"hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::encode"),
    ("hyper client: parse upstream response", r"hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::parse"),
    ("hyper_util legacy Client::send_request (pool, hand-off to the connection task)", r"hyper_util::client::legacy::client::Client<C,B>::send_request"),
    ("hyper client connection tasks (upstream socket I/O)", r"hyper::client::conn::http1::(upgrades::)?UpgradeableConnection|hyper::client::conn::http1::Connection"),
    ("hyper server connection tasks (client socket I/O)", r"hyper::server::conn::http1::(UpgradeableConnection|Connection)|hyper_util::server::conn::auto::UpgradeableConnection"),
    ("axum Router (route match, fallback, middleware)", r"^<?axum::routing"),
    ("select_route middleware (axum from_fn) incl. all below", r"portcullis::app::select_route"),
    ("AuthService::call incl. proxy", r"portcullis::auth::layer::"),
    ("  Authenticator::authenticate (cookie, HMAC, store)", r"portcullis::auth::authenticator::Authenticator::authenticate"),
    ("    CookieCodec::decode (base64 + HMAC verify)", r"portcullis::session::id::CookieCodec::decode"),
    ("    SessionId::key (SHA-256 + base64)", r"portcullis::session::id::SessionId::key"),
    ("    MemoryStore::load", r"portcullis::session::memory::"),
    ("    RedisStore::load", r"portcullis::session::redis::"),
    ("  identity headers (strip, set, strip_cookie)", r"portcullis::auth::identity_headers::"),
    ("  Proxy::forward incl. upstream client", r"portcullis::proxy::Proxy::forward"),
    ("    upstream_uri (format! + Uri parse)", r"portcullis::proxy::upstream_uri"),
    ("    strip_hop_by_hop, X-Forwarded-*", r"portcullis::proxy::(strip_hop_by_hop|append_forwarded_for)"),
    ("tokio scheduler: park/unpark", r"tokio::runtime::scheduler::multi_thread::(worker::Context::park|park::|idle::)|Unparker|unpark"),
    ("tokio time driver", r"tokio::runtime::time::"),
    ("tracing", r"^<?(tracing|tracing_core|tracing_subscriber)::"),
]


# Portcullis' layers, outermost first. Each sample goes to the innermost layer on its stack, split
# into user space and kernel: an exclusive partition of the gateway's time.
LAYERS = [
    ("tokio runtime (scheduling, park/unpark, I/O driver)", r"^tokio::runtime::scheduler::multi_thread::worker::run|^std::thread"),
    ("hyper server connection (read/parse request, write response)", r"hyper_util::server::conn::auto::UpgradeableConnection|axum::serve::handle_connection"),
    ("axum Router dispatch", r"^<?axum::routing::"),
    ("select_route middleware (from_fn, route lookup)", r"portcullis::app::select_route"),
    ("AuthService::call (glue: boxing, extensions, request kind)", r"portcullis::auth::layer::AuthService"),
    ("Authenticator::authenticate (cookie, HMAC, store)", r"portcullis::auth::authenticator::Authenticator::authenticate"),
    ("identity headers (strip, set, strip_cookie)", r"portcullis::auth::identity_headers::"),
    ("Proxy::forward (URI, hop-by-hop, X-Forwarded-*)", r"portcullis::proxy::Proxy::forward"),
    ("hyper_util legacy Client::send_request (pool, hand-off)", r"hyper_util::client::legacy::client::Client<C,B>::send_request"),
    ("hyper client connection task (write request, read/parse response)", r"hyper::client::conn::http1::(upgrades::)?UpgradeableConnection|hyper::client::conn::http1::Connection"),
]


def layer_of(names):
    found = None
    for depth, n in enumerate(reversed(names)):  # root first
        for i, (label, pat) in enumerate(LAYERS):
            if re.search(pat, n):
                found = label
    return found or "other (outside the runtime's task polls)"


def main():
    args = sys.argv[1:]
    us = None
    if args[:1] == ["--us-per-req"]:
        us = float(args[1]) or None
        args = args[2:]
    src = open(args[0], errors="replace") if args else sys.stdin
    total = 0
    self_time = collections.Counter()
    leafs = collections.Counter()
    incl = collections.Counter()
    rx = [(label, re.compile(p)) for label, p in INCLUSIVE]
    layers = collections.Counter()
    for stack in samples(src):
        total += 1
        names = [name_of(f) for f in stack]
        if "kernel.kallsyms" in stack[0]:
            bucket = kernel_bucket(names)
        else:
            bucket = user_bucket(stack)
            if bucket.startswith("user:"):
                leafs[f"{names[0][:150]} [{dso_of(stack[0])}]"] += 1
        self_time[bucket] += 1
        layers[(layer_of(names), "kernel" if "kernel.kallsyms" in stack[0] else "user")] += 1
        for label, r in rx:
            if any(r.search(n) for n in names):
                incl[label] += 1
    if not total:
        print("no samples")
        return
    def pct(n):
        text = f"{100 * n / total:5.1f}%"
        return f"{text}  {us * n / total:5.2f} µs/req" if us else text

    print(f"samples: {total}" + (f"; CPU per request while profiled: {us} µs" if us else ""))
    print("\nself time by bucket (leaf frame):")
    kernel = sum(v for k, v in self_time.items() if k.startswith("kernel"))
    print(f"  {pct(kernel)}  kernel, all")
    for k, v in self_time.most_common():
        if v / total >= 0.003:
            print(f"  {pct(v)}  {k}")
    print("\ninclusive (the frame is anywhere on the stack):")
    for label, _ in INCLUSIVE:
        if incl[label]:
            print(f"  {pct(incl[label])}  {label}")
    if any(l != "other (outside the runtime's task polls)" for l, _ in layers):
        print("\nby layer (innermost layer on the stack; user / kernel):")
        for label in [l for l, _ in LAYERS] + ["other (outside the runtime's task polls)"]:
            u, k = layers[(label, "user")], layers[(label, "kernel")]
            if u + k:
                print(f"  {pct(u + k)}  {label}\n           user {pct(u).strip()}, kernel {pct(k).strip()}")
    print("\ntop user-space leaf functions:")
    for k, v in leafs.most_common(30):
        print(f"  {pct(v)}  {k}")


if __name__ == "__main__":
    main()
