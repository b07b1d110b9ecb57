"""The Prometheus metrics of every component, with prometheus-client.

Why its multiprocess mode: `caducee serve --workers N` runs N processes behind one port, and
a scrape lands on one of them; counters kept per process showed one worker at random. With
`PROMETHEUS_MULTIPROC_DIR` set (the `caducee serve` command sets it to `<data dir>/metrics`,
emptied at start, before this module is imported), each process writes its values to files
there and `/metrics` adds them all up. Without it (tests, one-off commands) the ordinary
in-process registry is used.

Labels are bounded vocabularies (a listener, a rule name, a protocol), never an address.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import REGISTRY, Collector

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

messages = Counter(
    "caducee_messages_total",
    "Messages judged by the accept pipeline, by listener (channel), outcome and the rule that refused.",
    ["listener", "outcome", "rule"],
)
group_commit_seconds = Histogram(
    "caducee_group_commit_seconds",
    "Time one group commit (one transaction for many messages) took.",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
group_commit_failures = Counter("caducee_group_commit_failures_total", "Group commits whose transaction failed.")
imap_sessions = Gauge("caducee_imap_sessions", "Open IMAP connections.", multiprocess_mode="livesum")
imap_idle = Gauge("caducee_imap_idle", "IMAP sessions in IDLE.", multiprocess_mode="livesum")
http_requests = Counter("caducee_http_requests_total", "HTTP requests by method and status.", ["method", "status"])
http_seconds = Histogram(
    "caducee_http_request_seconds",
    "Time to answer an HTTP request, by area (webmail pages, JSON API, operations...).",
    ["area"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
post_delivery = Counter(
    "caducee_post_delivery_total",
    "Rows of the post-delivery queue worked (packages for the dossier, invitations for the agenda), by consumer and outcome: "
    "done, retry (failed, tried again later) or failed (given up after every attempt).",
    ["consumer", "outcome"],
)
login_failures = Counter("caducee_login_failures_total", "Failed logins (and code or reset attempts), by throttle.", ["throttle"])
login_locked = Counter("caducee_login_locked_total", "Attempts refused because the account or address is locked out.", ["throttle"])


def render(extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of every process's metrics, plus `extra` collectors (read from the
    database at scrape time: queue depth and age, campaign progress)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (the parent of `--workers N` calls it)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
