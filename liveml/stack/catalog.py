"""The Iceberg JDBC catalog shared by pyiceberg and Flink, and the local PostgreSQL it may live in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from liveml.errors import PrerequisiteError, ServiceError
from liveml.stack import process
from liveml.stack.base import Service


class PostgresService(Service):
    """A local PostgreSQL for the catalog (``catalog.backend: postgres`` with ``postgres_managed: true``).

    Several processes can then commit at once, which SQLite does not allow. PostgreSQL refuses to run as
    root, so as root the server runs as the ``postgres`` system user (setpriv, no extra process).
    """

    name = "postgres"
    start_timeout = 60.0

    @property
    def url(self):
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
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]

    def _start(self) -> subprocess.Popen:
        root = self.cfg.home_dir("postgres")
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
        self.cfg.home_dir(self.cfg.catalog.warehouse)
        if self.cfg.catalog.backend == "sqlite":
            self.cfg.home_file(self.cfg.catalog.sqlite_path)
        from liveml.catalog import open_catalog

        open_catalog(self.cfg)  # creates pyiceberg's catalog tables, which Flink's JdbcCatalog reads (V0)
        return None

    def start(self) -> str:
        if self.is_up():
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
