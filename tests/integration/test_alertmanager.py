"""Alertmanager as `liveml up` starts it: it posts an alert to the configured webhook, and stops by pid.

Runs the real Debian binary on a port of its own under a temporary home (no other service is needed); the
webhook is a plain HTTP server in the test, the receiver the controller will be."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()


def test_an_alert_reaches_the_webhook_and_resolves(tmp_path, webhook):
    from liveml.config import load_config
    from liveml.stack.alertmanager import AlertmanagerService

    url, received = webhook
    port = free_port()
    svc = AlertmanagerService(load_config(env={}, overrides={
        "home": str(tmp_path / "home"), "alertmanager": {"port": port, "webhook_url": url}}))
    assert svc.start() == "started"
    try:
        now = dt.datetime.now(dt.timezone.utc)
        alert = {"labels": {"alertname": "FeatureDrift", "severity": "warning", "model_name": "tips",
                            "model_version": "2", "feature": "fare"},
                 "annotations": {"summary": "fare drifted"}, "startsAt": now.isoformat()}
        assert requests.post(f"http://localhost:{port}/api/v2/alerts", json=[alert], timeout=5).ok
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received, "no webhook call within 20 s"
        first = received[0]
        assert first["status"] == "firing" and first["receiver"] == "liveml"
        assert [a["labels"]["feature"] for a in first["alerts"]] == ["fare"]
        # resolved: Alertmanager tells the webhook too (send_resolved)
        alert["endsAt"] = dt.datetime.now(dt.timezone.utc).isoformat()
        assert requests.post(f"http://localhost:{port}/api/v2/alerts", json=[alert], timeout=5).ok
        deadline = time.monotonic() + 30
        while not any(r["status"] == "resolved" for r in received) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(r["status"] == "resolved" for r in received), received
    finally:
        assert svc.stop() == "stopped"
    assert not svc.is_up()
