"""Kafka topics the platform uses, created up front with the partition count the jobs' parallelism needs."""

from __future__ import annotations

from liveml.config import LivemlConfig
from liveml.errors import ServiceError

DEFAULT_PARTITIONS = 2


def ensure_topics(cfg: LivemlConfig, names: list[str], partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    """Create the missing topics; returns those created. Existing topics are left as they are."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers, "socket.timeout.ms": 5000})
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except Exception:
        raise ServiceError(f"Kafka is not reachable at {cfg.kafka.bootstrap_servers}: run `liveml up kafka`.") from None
    missing = [n for n in names if n not in existing]
    if missing:
        # Replays carry historical event times as record timestamps; time-based retention would delete
        # a 2013 record at once. Retention is by size only on these topics.
        config = {"retention.ms": "-1", "retention.bytes": str(8 * 1024**3)}
        futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1, config=config)
                                       for n in missing])
        for name, fut in futures.items():
            try:
                fut.result(30)
            except Exception as exc:  # created concurrently by someone else: fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ServiceError(f"creating Kafka topic {name} failed: {exc}") from None
    return missing
