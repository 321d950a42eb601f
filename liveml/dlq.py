"""What the dead-letter topics hold: counts and reasons, read as any Kafka consumer would read them.

The feature job writes bad events to ``<topic>.dlq`` transactionally, so only committed records count
(``read_committed``); a Kafka end offset would also count transaction markers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

from liveml.config import LivemlConfig


def dead_letters(cfg: LivemlConfig, topics: list[str] | None = None, timeout_s: float = 20.0) -> dict[str, Any]:
    """``{topic: {"count": n, "reasons": {reason: n}, "examples": [payload prefix, ...]}}`` per DLQ topic.

    ``topics`` are unprefixed names (default: every source's DLQ); a topic that does not exist counts 0.
    Reads from the beginning to the end offsets taken at the start, so it ends even while the job writes.
    """
    from confluent_kafka import Consumer, TopicPartition

    from iceberg_schemas.sources import SOURCES

    names = topics or [s.dlq_topic for s in SOURCES.values()]
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"liveml-dlq-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest"})
    out: dict[str, Any] = {}
    try:
        existing = consumer.list_topics(timeout=10).topics
        for name in names:
            topic = cfg.kafka.topic(name)
            out[name] = {"count": 0, "reasons": {}, "examples": []}
            if topic not in existing:
                continue
            parts = [TopicPartition(topic, p) for p in existing[topic].partitions]
            ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
            todo = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, 0) for p in todo])
            reasons: Counter = Counter()
            deadline = time.monotonic() + timeout_s
            while todo and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                # done with a partition once its position passes the end offset: the last offsets of a
                # transactional topic are commit markers, which are never delivered as messages
                for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= ends[tp.partition]:
                        todo.discard(tp.partition)
                if msg is None or msg.error():
                    continue
                try:
                    record = json.loads(msg.value())
                except ValueError:
                    continue
                reasons[record.get("reason") or "unknown"] += 1
                if len(out[name]["examples"]) < 3:
                    out[name]["examples"].append(str(record.get("payload"))[:160])
            out[name]["count"] = sum(reasons.values())
            out[name]["reasons"] = dict(reasons.most_common())
            consumer.unassign()
    finally:
        consumer.close()
    return out
