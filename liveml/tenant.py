"""Tenants: isolated copies of a config on one running stack (topic prefix, Redis database, own catalog).

Tests and benchmarks use them to share a Kafka, Flink and Redis without seeing each other's data; a team
can use them the same way for a staging copy of the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from liveml.config import LivemlConfig, load_config


def write_tenant_config(base: LivemlConfig, name: str, redis_db: int) -> Path:
    """``LIVEML_HOME/tenants/<name>.yaml``: ``base`` with topics prefixed ``<name>-``, Redis database
    ``redis_db`` and a SQLite catalog and warehouse of its own under ``tenants/<name>/``."""
    data = base.model_dump(exclude={"source"})
    data["home"] = str(base.home_path)
    data["jars_dir"] = str(base.jars_path)
    data["kafka"]["topic_prefix"] = f"{name}-"
    data["redis"]["url"] = f"{base.redis.url.rsplit('/', 1)[0]}/{redis_db}"
    data["catalog"].update({"backend": "sqlite", "sqlite_path": f"tenants/{name}/catalog.db",
                            "warehouse": f"tenants/{name}/warehouse"})
    path = base.home_file("tenants", f"{name}.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def create_tenant(base: LivemlConfig, name: str, redis_db: int) -> Path:
    """Write the tenant's config, then give it empty tables, its topics and an empty Redis database."""
    import redis

    from iceberg_schemas.registry import ensure_tables
    from liveml.catalog import open_catalog
    from liveml.topics import ensure_topics

    path = write_tenant_config(base, name, redis_db)
    cfg = load_config(path, env={})
    cfg.home_file(cfg.catalog.sqlite_path)
    ensure_tables(open_catalog(cfg))
    ensure_topics(cfg)
    redis.Redis.from_url(cfg.redis.url).flushdb()
    return path
