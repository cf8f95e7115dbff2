"""A recording stand-in for a Slack incoming webhook on 127.0.0.1, for tests and for trying alert settings.

It answers from a script of statuses (e.g. 500, 429 with Retry-After) and then 200, and records the JSON body of
every request it accepted, so a test can check what arrived, and how many times. `delay_s` makes every answer
that slow (a Slack under load), to race senders against their leases.

    with RecordingWebhook() as hook:
        hook.script = [(500, {}), (429, {"Retry-After": "1"})]
        ... AlertSettings(slack_webhook_url=hook.url) ...
        assert len(hook.received) == 1
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingWebhook:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.script: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.delay_s:
                    time.sleep(outer.delay_s)  # before recording: an answer this late is one the sender waits for
                with outer.lock:
                    outer.attempts += 1
                    status, headers = outer.script.pop(0) if outer.script else (200, {})
                    if 200 <= status < 300:
                        outer.received.append(json.loads(body))
                        outer.arrived.notify_all()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"rate_limited" if status == 429 else b"error")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/SECRETTOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until `predicate(received)` holds (True) or `timeout` seconds pass (False)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: predicate(self.received), timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "RecordingWebhook":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
