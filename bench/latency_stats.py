#!/usr/bin/env python3
"""Percentiles of an h2load --log-file (start µs, status, µs to end of response; tab-separated).

    python3 bench/latency_stats.py LOG SECONDS RATE_ASKED

Prints one markdown row fragment: asked | served/s | p50 | p99 | p99.9 | max (ms) | non-200.
"""

import sys

path, secs, asked = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
if not rows:
    sys.exit(f"{path}: no requests logged")
us = sorted(int(r[2]) for r in rows)
bad = sum(1 for r in rows if r[1] != "200")


def q(p):
    return us[min(len(us) - 1, int(p * len(us)))] / 1000


print(f"{asked} | {len(us) / secs:.0f} | {q(0.5):.3f} | {q(0.99):.3f} | {q(0.999):.3f} | {us[-1] / 1000:.3f} | {bad}")
