"""Kafka topics the platform declares, and the one function that creates them.

A job's Kafka source does not create its topic: a job submitted before anything was produced restarts
over and over (``UnknownTopicOrPartitionException``). So the topics are declared here, each with its
partitions and retention, and made by ``liveml tables create`` (beside the tables), by ``liveml replay``
and by a new tenant, all through :func:`ensure_topics`; ``liveml submit`` checks a job's source topics
with :func:`missing_topics` before it starts the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from iceberg_schemas.sources import SOURCES, TOPICS
from liveml.config import LivemlConfig
from liveml.errors import ServiceError

DEFAULT_PARTITIONS = 2  # what the jobs' default parallelism (2) reads in parallel
# Replays carry historical event times as record timestamps, and time-based retention would delete a 2013
# record at once: retention is by size only.
RETENTION_MS = -1
RETENTION_BYTES = 8 * 1024**3
PROOF_TOPIC = "proof"  # the proof job's source (flink_jobs/proof_job.py SOURCE_TOPIC; a test keeps them equal)


@dataclass(frozen=True)
class TopicSpec:
    """One topic, named before the config's ``kafka.topic_prefix``."""

    name: str
    doc: str
    partitions: int = DEFAULT_PARTITIONS
    retention_ms: int = RETENTION_MS
    retention_bytes: int = RETENTION_BYTES

    def config(self) -> dict[str, str]:
        """The topic-level settings Kafka takes at creation."""
        return {"retention.ms": str(self.retention_ms), "retention.bytes": str(self.retention_bytes)}


def _doc(topic: str) -> str:
    for src in SOURCES.values():
        if topic == src.topic:
            return f"{src.name} events, read by the feature job"
        if topic == src.dlq_topic:
            return f"{src.name} events that failed validation, with the reason"
    return "the enrichment job's predictions, one JSON record per completed trip"


# Every topic of the platform: the sources', their dead-letter topics and predictions
# (iceberg_schemas.sources.TOPICS), and the proof job's, which `make demo` writes one partition of.
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    *(TopicSpec(t, _doc(t)) for t in TOPICS),
    TopicSpec(PROOF_TOPIC, "events of the proof job (`liveml demo --proof`)", partitions=1),
)


@dataclass
class TopicResult:
    topic: str  # as created, with the prefix
    action: str  # "created", or "unchanged" for one that already existed (as `tables create` says of tables)
    partitions: int  # what the topic has now
    declared_partitions: int

    def as_dict(self) -> dict:
        return {"kind": "topic", **self.__dict__}


def declared_names(cfg: LivemlConfig) -> list[str]:
    """The declared topics as this config names them (its prefix applied)."""
    return [cfg.kafka.topic(s.name) for s in TOPIC_SPECS]


def _admin(bootstrap_servers: str):
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("liveml.kafka.admin")  # librdkafka's connection noise; our error says it all
    quiet.setLevel(logging.CRITICAL)
    return AdminClient({"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000, "logger": quiet})


def unreachable(bootstrap_servers: str) -> ServiceError:
    return ServiceError(f"Kafka is not reachable at {bootstrap_servers}: run `liveml up kafka`.")


def _reachable(bootstrap_servers: str) -> bool:
    """A TCP probe of the bootstrap servers: a stopped broker is reported at once, not after the admin
    client's 10 s metadata timeout."""
    from liveml.stack.process import port_open

    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if port_open(host or "localhost", int(port), timeout=2.0):
            return True
    return False


def existing_topics(bootstrap_servers: str) -> dict[str, int]:
    """Topic -> partitions on the cluster; :class:`ServiceError` naming the address if Kafka is down."""
    if not _reachable(bootstrap_servers):
        raise unreachable(bootstrap_servers)
    try:
        meta = _admin(bootstrap_servers).list_topics(timeout=10)
    except Exception:
        raise unreachable(bootstrap_servers) from None
    return {name: len(t.partitions) for name, t in meta.topics.items()}


def missing_topics(bootstrap_servers: str, names: list[str]) -> list[str]:
    """Those of ``names`` the cluster does not have, in order."""
    have = existing_topics(bootstrap_servers)
    return [n for n in names if n not in have]


def ensure_topics(cfg: LivemlConfig, specs: tuple[TopicSpec, ...] = TOPIC_SPECS) -> list[TopicResult]:
    """Create the missing ones of ``specs`` (prefixed by the config) with their partitions and retention.

    An existing topic is left as it is, even with another partition count: adding partitions to a live
    topic moves keys to other partitions, and a trip's events would lose their order. Its row says what it
    has, so the difference shows.
    """
    from confluent_kafka.admin import NewTopic

    bootstrap = cfg.kafka.bootstrap_servers
    have = existing_topics(bootstrap)
    wanted = {cfg.kafka.topic(s.name): s for s in specs}
    new = [NewTopic(name, num_partitions=s.partitions, replication_factor=1, config=s.config())
           for name, s in wanted.items() if name not in have]
    created = set()
    if new:
        admin = _admin(bootstrap)  # held: a collected client destroys its handle and fails the futures
        for name, fut in admin.create_topics(new).items():
            try:
                fut.result(30)
                created.add(name)
            except Exception as exc:  # created concurrently by someone else: fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ServiceError(f"creating Kafka topic {name} at {bootstrap} failed: {exc}") from None
    return [TopicResult(name, "created" if name in created else "unchanged",
                        s.partitions if name in created else have.get(name, s.partitions), s.partitions)
            for name, s in wanted.items()]
