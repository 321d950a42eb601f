"""Kafka 4 in KRaft mode, single node: the broker the stream runs through, formatted on first start."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from liveml.config import REPO_ROOT
from liveml.errors import PrerequisiteError, ServiceError
from liveml.stack import process
from liveml.stack.base import Service, java_binary


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
        path = self.cfg.home_file("kafka", "server.properties")
        path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        log4j = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"
        return [java_binary(), f"-Xmx{self.cfg.kafka.heap}", f"-Xms{self.cfg.kafka.heap}",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", self._classpath(), main, *args]

    def _start(self) -> subprocess.Popen:
        props = self._properties()
        if not (self.data_dir / "meta.properties").exists():
            self.cfg.home_dir("kafka", "data")
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
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("liveml.kafka.admin")
    logger.setLevel(logging.CRITICAL)
    return logger
