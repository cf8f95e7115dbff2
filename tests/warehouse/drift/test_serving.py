"""The drift reports served over real HTTP (what `flywheel serve` runs with FLYWHEEL_SERVE_REPORTS): a report
link opens; nothing outside the directory, and no listing, is ever answered."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from flywheel.errors import ConfigError
from flywheel.flows.settings import ServeSettings
from flywheel.warehouse.drift.serving import ReportServer


def _get(server: ReportServer, raw_path: str, method: str = "GET") -> tuple[int, bytes]:
    host, port = server.server.server_address[:2]
    con = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        con.request(method, raw_path)  # sent as written: no client-side normalization of `..`
        resp = con.getresponse()
        return resp.status, resp.read()
    finally:
        con.close()


def test_reports_are_served_and_nothing_outside_the_directory_is(tmp_path: Path) -> None:
    reports = tmp_path / "drift_reports"
    (reports / "20261101T000000-ab12").mkdir(parents=True)
    page = reports / "20261101T000000-ab12" / "app=assistant-1a2b3c.html"
    page.write_text("<html>report</html>")
    (tmp_path / "secret.txt").write_text("do not serve")
    (reports / "escape.txt").symlink_to(tmp_path / "secret.txt")
    with ReportServer(reports) as server:
        assert _get(server, "/20261101T000000-ab12/app%3Dassistant-1a2b3c.html") == (200, b"<html>report</html>")
        assert _get(server, "/20261101T000000-ab12/app=assistant-1a2b3c.html", "HEAD")[0] == 200
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/20261101T000000-ab12/%2E%2E/%2E%2E/secret.txt",
                     "//" + str(tmp_path / "secret.txt"), "/escape.txt", "/", "/20261101T000000-ab12/",
                     "/nope.html", "/x%00.html"):
            status, body = _get(server, path)
            assert status == 404 and b"do not serve" not in body, path


def test_a_malformed_reports_address_fails_at_startup() -> None:
    assert ServeSettings(reports="0.0.0.0:8765").reports_address() == ("0.0.0.0", 8765)
    with pytest.raises(ConfigError, match="FLYWHEEL_SERVE_REPORTS='8765' is not HOST:PORT"):
        ServeSettings(reports="8765")
