"""`liveml up`, `down` and `status`: drive the services in dependency order and report on them."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from liveml.config import LivemlConfig
from liveml.errors import LivemlError
from liveml.job_state import stop_all
from liveml.stack import process
from liveml.stack.services import SERVICES, Service

DEFAULT_SERVICES = tuple(SERVICES)


def enabled(cfg: LivemlConfig) -> list[str]:
    """The services this config runs: a local PostgreSQL only for a managed PostgreSQL catalog."""
    managed_pg = cfg.catalog.backend == "postgres" and cfg.catalog.postgres_managed
    return [n for n in DEFAULT_SERVICES if n != "postgres" or managed_pg]


def default_up(cfg: LivemlConfig) -> list[str]:
    """What a bare `liveml up` starts: every enabled service but those started only on request (serving)."""
    return [n for n in enabled(cfg) if not getattr(SERVICES[n], "on_request", False)]


def resolve(cfg: LivemlConfig, names: Iterable[str] | None, bare: str = "all") -> list[str]:
    """Named services in dependency order; none named means ``enabled`` (down, status) or ``default_up``."""
    names = list(names or [])
    if not names:
        return default_up(cfg) if bare == "up" else enabled(cfg)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise LivemlError(f"unknown service(s) {unknown}; known: {enabled(cfg)}")
    off = [n for n in names if n not in enabled(cfg)]
    if off:
        raise LivemlError(f"{off} is not part of this stack: a local PostgreSQL runs only with "
                          "catalog.backend: postgres and catalog.postgres_managed: true")
    return [n for n in DEFAULT_SERVICES if n in names]  # always in dependency order


def services(cfg: LivemlConfig, names: Iterable[str] | None = None, bare: str = "all") -> list[Service]:
    return [SERVICES[n](cfg) for n in resolve(cfg, names, bare)]


def up(cfg: LivemlConfig, names: Iterable[str] | None = None,
       on_progress: Callable[[str, str, float], None] | None = None) -> dict[str, dict]:
    cfg.home_dir()
    result = {}
    for svc in services(cfg, names, bare="up"):
        t0 = time.monotonic()
        outcome = svc.start()
        took = time.monotonic() - t0
        result[svc.name] = {"outcome": outcome, "seconds": round(took, 2)}
        if on_progress:
            on_progress(svc.name, outcome, took)
    return result


def down(cfg: LivemlConfig, names: Iterable[str] | None = None) -> dict[str, dict]:
    result = {}
    chosen = services(cfg, names)
    # jobs first, while Kafka still takes their transactions: each stops with a savepoint that the next
    # `liveml submit` resumes from (liveml/job_state.py)
    jobs = stop_all(cfg) if any(svc.name == "flink" for svc in chosen) else []
    for svc in reversed(chosen):
        outcome = svc.stop()
        ports_busy = [p for p in svc.ports() if process.port_open("127.0.0.1", p)]
        if outcome == "stopped":
            deadline = time.monotonic() + 10
            while ports_busy and time.monotonic() < deadline:
                time.sleep(0.2)
                ports_busy = [p for p in svc.ports() if process.port_open("127.0.0.1", p)]
        result[svc.name] = {"outcome": outcome, "ports_still_open": ports_busy}
    if jobs:
        result["flink"]["jobs"] = jobs
    return result


def status(cfg: LivemlConfig, names: Iterable[str] | None = None) -> dict[str, dict]:
    return {svc.name: svc.status() for svc in services(cfg, names)}
