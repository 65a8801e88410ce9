"""The loop-only histogram and counters expose exactly what prometheus_client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from meshsec.controller.metrics import LabelledCounters, LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Bounds themselves (le is <=), values between them, below the first and beyond the last.
VALUES = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.99, 1.0, 1.5, 30.0, 0.0005]


def test_histogram_exposition_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("push_seconds", "help text", BUCKETS)
    ours.register(loop)
    reference = Histogram("push_seconds", "help text", buckets=BUCKETS, registry=theirs)
    for value in VALUES:
        loop.observe(value)
        reference.observe(value)
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected


def test_labelled_counters_exposition_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters = {"snapshot": LoopCounter(), "delta": LoopCounter()}
    ours.register(LabelledCounters("pushed_bytes", "help text", "kind", counters))
    reference = Counter("pushed_bytes", "help text", labelnames=["kind"], registry=theirs)
    for kind, size in [("delta", 120), ("snapshot", 4000), ("delta", 7)]:
        counters[kind].value += size
        reference.labels(kind).inc(size)
    reference.labels("snapshot")  # prometheus_client lists a label value only once used
    lines = generate_latest(theirs).decode().splitlines()
    expected = sorted(line for line in lines if "_created" not in line)
    assert sorted(generate_latest(ours).decode().splitlines()) == expected
