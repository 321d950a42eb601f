"""The local stack on real engines: Kafka (KRaft), Flink standalone, Redis, the Iceberg catalog, Prometheus.

Each service is a small class with the same four verbs (start, healthy, address, ports). The launcher in
``liveml.stack.launcher`` drives them in dependency order. Everything a service writes lives under
``LIVEML_HOME``; nothing is installed system-wide at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import requests
import yaml

from liveml.config import REPO_ROOT, LivemlConfig
from liveml.errors import PrerequisiteError, ServiceError
from liveml.stack import process
from liveml.stack.process import PidFile


def _which(binary: str, package: str) -> str:
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if not found:
        raise PrerequisiteError(f"{binary} is not installed. Run `make setup` (as root it apt-installs it) "
                                f"or `apt-get install {package}`.")
    return found


def java_binary() -> str:
    """Java from JAVA_HOME when it is set, else from PATH; missing Java names the package to install."""
    import os

    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not candidate.exists():
            raise PrerequisiteError(f"JAVA_HOME={java_home} has no bin/java. Install Java 17 "
                                    "(`apt-get install openjdk-17-jdk-headless`) or fix JAVA_HOME.")
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise PrerequisiteError("Java 17 is not installed. Run `make setup` as root, or "
                                "`apt-get install openjdk-17-jdk-headless`.")
    return found


class Service:
    name: str = ""
    managed = True  # False: nothing to start (e.g. an external PostgreSQL)
    start_timeout = 60.0

    def __init__(self, cfg: LivemlConfig):
        self.cfg = cfg
        self.pidfile = PidFile(cfg.path("run", f"{self.name}.pid"))
        self.log = cfg.path("logs", f"{self.name}.log")

    # overridden by each service
    def ports(self) -> list[int]:
        return []

    def address(self) -> str:
        return ""

    def healthy(self) -> bool:
        raise NotImplementedError

    def _start(self) -> subprocess.Popen | None:
        raise NotImplementedError

    # shared behaviour
    def pids(self) -> list[int]:
        return [t.pid for t in self.pidfile.alive()]

    def start(self) -> str:
        """Start if needed. Returns 'started' or 'already up'."""
        if self.pidfile.alive() and self._safe_healthy():
            return "already up"
        if self.pidfile.alive():  # ours but unhealthy (e.g. half-started): restart cleanly
            self.stop()
        for port in self.ports():
            process.ensure_port_free(self.name, port)
        proc = self._start()
        process.wait_until(self.healthy, self.start_timeout, f"{self.name}", self.log, proc)
        return "started"

    def stop(self) -> str:
        tracked = self.pidfile.read()
        if not tracked:
            return "not running"
        process.terminate(tracked)
        self.pidfile.remove()
        return "stopped"

    def _safe_healthy(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        pids = self.pids()
        return {"up": self._safe_healthy(), "address": self.address(), "pid": pids[0] if pids else None,
                "pids": pids, "managed": self.managed, "log": str(self.log)}


class KafkaService(Service):
    """A single-node Kafka 4 broker in KRaft mode, formatted on first start."""

    name = "kafka"
    start_timeout = 90.0

    @property
    def data_dir(self) -> Path:
        return self.cfg.path("kafka", "data")

    def ports(self) -> list[int]:
        return [self.cfg.kafka.port, self.cfg.kafka.controller_port]

    def address(self) -> str:
        return self.cfg.kafka.bootstrap_servers

    def _classpath(self) -> str:
        jars = self.cfg.jars_path / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise PrerequisiteError(f"the Kafka broker jars are missing from {jars}. Run `make setup` "
                                    "(it fetches them with Maven from deploy/maven/pom.xml).")
        return f"{jars}/*"

    def _properties(self) -> Path:
        k = self.cfg.kafka
        host = "127.0.0.1"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{k.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{k.port},CONTROLLER://{host}:{k.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{k.bootstrap_servers.split(',')[0]}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            # replays produce records with historical timestamps: never delete by age on the local broker
            "log.retention.ms": "-1",
            "log.retention.bytes": str(8 * 1024**3),
            # Flink's exactly-once Kafka sink keeps transactions open across checkpoints.
            "transaction.max.timeout.ms": "3600000",
        }
        path = self.cfg.path("kafka", "server.properties")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        log4j = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"
        return [java_binary(), f"-Xmx{self.cfg.kafka.heap}", f"-Xms{self.cfg.kafka.heap}",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", self._classpath(), main, *args]

    def _start(self) -> subprocess.Popen:
        props = self._properties()
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format", "--standalone", "-t",
                                            _kafka_cluster_id(), "-c", str(props)),
                                 capture_output=True, text=True)
            if fmt.returncode != 0:
                raise ServiceError(f"formatting Kafka storage in {self.data_dir} failed:\n"
                                   f"{fmt.stdout}{fmt.stderr}")
        return process.spawn(self._java("kafka.Kafka", str(props)), self.log, self.pidfile)

    def healthy(self) -> bool:
        if not process.port_open("127.0.0.1", self.cfg.kafka.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.cfg.kafka.bootstrap_servers, "socket.timeout.ms": 2000,
                             "logger": _quiet_logger()})
        meta = admin.list_topics(timeout=3)
        return bool(meta.brokers)


def _kafka_cluster_id() -> str:
    """Kafka wants a random 16-byte id in URL-safe base64 (what `kafka-storage random-uuid` prints)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _quiet_logger():
    import logging

    logger = logging.getLogger("liveml.kafka.admin")
    logger.setLevel(logging.CRITICAL)
    return logger


class RedisService(Service):
    name = "redis"
    start_timeout = 20.0

    def ports(self) -> list[int]:
        return [self.cfg.redis.port]

    def address(self) -> str:
        return f"localhost:{self.cfg.redis.port}"

    def _start(self) -> subprocess.Popen:
        binary = _which("redis-server", "redis-server")
        data = self.cfg.path("redis")
        data.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--port", str(self.cfg.redis.port), "--bind", "127.0.0.1", "--dir", str(data),
               "--daemonize", "no", "--appendonly", "yes", "--save", "", "--protected-mode", "yes"]
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        import redis

        return bool(redis.Redis.from_url(self.cfg.redis.url, socket_timeout=1).ping())


class PostgresService(Service):
    """A local PostgreSQL for the catalog (``catalog.backend: postgres`` with ``postgres_managed: true``).

    Several processes can then commit at once, which SQLite does not allow. PostgreSQL refuses to run as
    root, so as root the server runs as the ``postgres`` system user (setpriv, no extra process).
    """

    name = "postgres"
    start_timeout = 60.0

    @property
    def url(self):
        from urllib.parse import urlparse

        return urlparse(self.cfg.catalog.postgres_url or "")

    @property
    def data_dir(self) -> Path:
        return self.cfg.path("postgres", "data")

    def ports(self) -> list[int]:
        return [self.url.port or 5432]

    def address(self) -> str:
        return f"localhost:{self.url.port or 5432}"

    def _bin(self, name: str) -> str:
        for candidate in (shutil.which(name), *sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))):
            if candidate:
                return str(candidate)
        raise PrerequisiteError(f"PostgreSQL's {name} is not installed: `apt-get install postgresql`, or use "
                                "catalog.backend: sqlite")

    def _as_owner(self, cmd: list[str]) -> list[str]:
        import os

        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]

    def _start(self) -> subprocess.Popen:
        import os

        root = self.cfg.path("postgres")
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            probe = subprocess.run(self._as_owner(["test", "-w", str(root)]))
            if probe.returncode != 0:
                raise ServiceError(f"PostgreSQL runs as user postgres, which cannot reach {root}: make its "
                                   "parent directories traversable (chmod o+x) or set `home` elsewhere.")
        if not (self.data_dir / "PG_VERSION").exists():
            user = self.url.username or "iceberg"
            pwfile = root / "pwfile"
            pwfile.write_text((self.url.password or user) + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            init = subprocess.run(self._as_owner([self._bin("initdb"), "-D", str(self.data_dir), "-U", user,
                                                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]),
                                  capture_output=True, text=True)
            pwfile.unlink()
            if init.returncode != 0:
                raise ServiceError(f"initdb failed in {self.data_dir}:\n{init.stdout}{init.stderr}")
        cmd = self._as_owner([self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.ports()[0]),
                              "-c", "listen_addresses=127.0.0.1", "-k", str(root)])
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        import psycopg2

        url = self.url
        dbname = url.path.lstrip("/") or "postgres"
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=url.port or 5432, user=url.username,
                                    password=url.password, dbname=dbname, connect_timeout=2)
        except psycopg2.OperationalError as exc:
            if f'database "{dbname}" does not exist' not in str(exc):
                raise
            admin = psycopg2.connect(host="127.0.0.1", port=url.port or 5432, user=url.username,
                                     password=url.password, dbname="postgres", connect_timeout=2)
            admin.autocommit = True
            admin.cursor().execute(f'CREATE DATABASE "{dbname}"')
            admin.close()
            return False
        conn.close()
        return True


class CatalogService(Service):
    """The Iceberg JDBC catalog. With SQLite there is no process: 'up' means the catalog opens."""

    name = "catalog"
    managed = False
    start_timeout = 20.0

    def address(self) -> str:
        return self.cfg.catalog_properties()["uri"]

    def _start(self) -> None:
        self.cfg.warehouse_path.mkdir(parents=True, exist_ok=True)
        if self.cfg.catalog.backend == "sqlite":
            self.cfg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        from liveml.catalog import open_catalog

        open_catalog(self.cfg)  # creates pyiceberg's catalog tables, which Flink's JdbcCatalog reads (V0)
        return None

    def start(self) -> str:
        if self._safe_healthy():
            return "already up"
        self._start()
        process.wait_until(self.healthy, self.start_timeout, self.name)
        return "started"

    def stop(self) -> str:
        return "nothing to stop"

    def healthy(self) -> bool:
        if self.cfg.catalog.backend == "sqlite" and not self.cfg.sqlite_path.exists():
            return False
        from liveml.catalog import open_catalog

        open_catalog(self.cfg).list_namespaces()
        return True


class FlinkService(Service):
    """A Flink standalone cluster (one JobManager, one TaskManager) from the pyflink wheel's own bin/."""

    name = "flink"
    start_timeout = 120.0

    def ports(self) -> list[int]:
        return [self.cfg.flink.port, self.cfg.flink.rpc_port]

    def address(self) -> str:
        return self.cfg.flink.rest_url

    @property
    def conf_dir(self) -> Path:
        return self.cfg.path("flink", "conf")

    def write_conf(self) -> Path:
        from liveml.flink import flink_home, render_flink_conf

        home = flink_home()
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for item in (home / "conf").iterdir():  # log4j, logback, masters, workers: as shipped
            if item.is_file() and item.name != "config.yaml":
                shutil.copy(item, self.conf_dir / item.name)
        conf = render_flink_conf(self.cfg, yaml.safe_load((home / "conf" / "config.yaml").read_text()))
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=True))
        return self.conf_dir

    def _start(self) -> subprocess.Popen:
        from liveml.flink import flink_env, flink_home

        java_binary()
        self.write_conf()
        env = flink_env(self.cfg)
        bin_dir = flink_home() / "bin"
        jm = process.spawn(["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"],
                           self.cfg.path("logs", "flink-jobmanager.log"), self.pidfile, env=env)
        self.start_taskmanager()
        self.log = self.cfg.path("logs", "flink-jobmanager.log")
        return jm

    def start_taskmanager(self) -> subprocess.Popen:
        """Start one more TaskManager (also how a killed one is replaced); tracked like the first."""
        from liveml.flink import flink_env, flink_home

        return process.spawn(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"],
                             self.cfg.path("logs", "flink-taskmanager.log"), self.pidfile, env=flink_env(self.cfg))

    def taskmanager_java_pids(self) -> list[int]:
        import psutil

        pids = []
        for pid in self.pids():
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                try:
                    if proc.name() == "java" and any("TaskManagerRunner" in a for a in proc.cmdline()):
                        pids.append(proc.pid)
                except psutil.Error:
                    continue
        return sorted(set(pids))

    def healthy(self) -> bool:
        return self.overview().get("taskmanagers", 0) >= 1

    def overview(self) -> dict[str, Any]:
        resp = requests.get(f"{self.cfg.flink.rest_url}/overview", timeout=2)
        resp.raise_for_status()
        return resp.json()

    def status(self) -> dict[str, Any]:
        out = super().status()
        try:
            ov = self.overview()
            out.update({"taskmanagers": ov.get("taskmanagers"), "slots_total": ov.get("slots-total"),
                        "jobs_running": ov.get("jobs-running"), "version": ov.get("flink-version")})
        except Exception:
            out.update({"taskmanagers": 0})
        return out


class PrometheusService(Service):
    """Prometheus scraping Flink's reporter and the Python processes' /metrics endpoints."""

    name = "prometheus"
    start_timeout = 30.0

    def ports(self) -> list[int]:
        return [self.cfg.prometheus.port]

    def address(self) -> str:
        return f"localhost:{self.cfg.prometheus.port}"

    def write_conf(self) -> Path:
        p = self.cfg.prometheus
        lo, hi = (int(x) for x in self.cfg.flink.metrics_port_range.split("-"))
        conf = {
            "global": {"scrape_interval": p.scrape_interval, "evaluation_interval": p.scrape_interval},
            "rule_files": [str(REPO_ROOT / "deploy" / "prometheus" / "rules.yml")],
            "scrape_configs": [
                {"job_name": "flink", "static_configs": [{"targets": [f"localhost:{port}"
                                                                      for port in range(lo, hi + 1)]}]},
                {"job_name": "liveml", "static_configs": [{"targets": [
                    f"localhost:{p.metrics_base_port + i}" for i in range(10)]}]},
            ],
        }
        path = self.cfg.path("prometheus", "prometheus.yml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
        return path

    def _start(self) -> subprocess.Popen:
        binary = _which("prometheus", "prometheus")
        conf = self.write_conf()
        cmd = [binary, f"--config.file={conf}", f"--storage.tsdb.path={self.cfg.path('prometheus', 'data')}",
               f"--web.listen-address=127.0.0.1:{self.cfg.prometheus.port}", "--web.enable-lifecycle"]
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        return requests.get(f"http://localhost:{self.cfg.prometheus.port}/-/ready", timeout=2).ok


# start order matters: the catalog before Flink (jobs open it), Kafka before Flink (sources connect)
SERVICES: dict[str, type[Service]] = {
    "postgres": PostgresService,
    "catalog": CatalogService,
    "kafka": KafkaService,
    "redis": RedisService,
    "flink": FlinkService,
    "prometheus": PrometheusService,
}
