"""Serving the drift reports directory over HTTP, so an alert's report link (FLYWHEEL_DRIFT_REPORT_BASE_URL) is a
URL a person opens from Slack. `flywheel serve` runs it when FLYWHEEL_SERVE_REPORTS is set; object storage that
the directory is synced to serves the same links.

Guarantees: only GET and HEAD of a regular file below the directory are answered (200); anything else is 404,
whatever the path holds (`..`, percent-encoded `..`, absolute paths, symlinks leading out, NUL bytes); no
directory listing; nothing is ever written.
"""

from __future__ import annotations

import mimetypes
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit


def resolve(root: Path, url_path: str) -> Path | None:
    """The file below `root` that `url_path` names, or None when it names nothing there (or anything outside)."""
    path = unquote(urlsplit(url_path).path)
    if "\x00" in path:
        return None
    base = root.resolve()
    candidate = (base / path.lstrip("/")).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


class ReportServer:
    """A read-only static file server of `directory` on `host:port` (port 0: any free one), in a daemon thread.

        with ReportServer(reports_dir, "0.0.0.0", 8765) as server:
            print(server.url)
    """

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)

        class Handler(BaseHTTPRequestHandler):
            def _send(self, body: bool) -> None:
                f = resolve(root, self.path)
                if f is None:
                    self.send_error(404, "no such report")
                    return
                self.send_response(200)
                self.send_header("Content-Type", mimetypes.guess_type(f.name)[0] or "application/octet-stream")
                self.send_header("Content-Length", str(f.stat().st_size))
                self.end_headers()
                if body:
                    with open(f, "rb") as fh:
                        shutil.copyfileobj(fh, self.wfile)

            def do_GET(self) -> None:  # noqa: N802
                self._send(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._send(False)

            def log_message(self, *args: object) -> None:
                pass

        self.directory = root
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="flywheel-reports", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}/"

    def start(self) -> "ReportServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever, which a never-started server never ran
            self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "ReportServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
