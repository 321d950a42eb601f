"""Redis, the online store's server, with an append-only file under LIVEML_HOME."""

from __future__ import annotations

import subprocess

from liveml.stack import process
from liveml.stack.base import Service, require_binary


class RedisService(Service):
    name = "redis"
    start_timeout = 20.0

    def ports(self) -> list[int]:
        return [self.cfg.redis.port]

    def address(self) -> str:
        return f"localhost:{self.cfg.redis.port}"

    def _start(self) -> subprocess.Popen:
        binary = require_binary("redis-server", "redis-server")
        data = self.cfg.home_dir("redis")
        cmd = [binary, "--port", str(self.cfg.redis.port), "--bind", "127.0.0.1", "--dir", str(data),
               "--daemonize", "no", "--appendonly", "yes", "--save", "", "--protected-mode", "yes"]
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        import redis

        return bool(redis.Redis.from_url(self.cfg.redis.url, socket_timeout=1).ping())
