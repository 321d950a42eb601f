"""The services of the local stack, by name, in the order they start.

The catalog comes before Flink (jobs open it) and Kafka before Flink (sources connect); a local PostgreSQL,
when the catalog lives there, comes first of all.
"""

from __future__ import annotations

from liveml.stack.alertmanager import AlertmanagerService
from liveml.stack.base import Service
from liveml.stack.catalog import CatalogService, PostgresService
from liveml.stack.flink_cluster import FlinkService
from liveml.stack.kafka import KafkaService
from liveml.stack.monitor import MonitorService
from liveml.stack.prometheus import PrometheusService
from liveml.stack.redis_server import RedisService
from liveml.stack.serving import ServingService

SERVICES: dict[str, type[Service]] = {
    "postgres": PostgresService,
    "catalog": CatalogService,
    "kafka": KafkaService,
    "redis": RedisService,
    "flink": FlinkService,
    "prometheus": PrometheusService,
    "alertmanager": AlertmanagerService,
    "serving": ServingService,
    "monitor": MonitorService,  # after the catalog; started only when named (`liveml up monitor`)
}

__all__ = ["SERVICES", "Service", "AlertmanagerService", "CatalogService", "FlinkService", "KafkaService",
           "MonitorService", "PostgresService", "PrometheusService", "RedisService", "ServingService"]
