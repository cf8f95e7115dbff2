"""Alerts: an outbox that never loses one, cooldown suppression, and delivery to a Slack incoming webhook.

Why SQLite and not a Delta table: delivery is a per-row state machine (pending -> sending -> delivered, with
attempts, leases and next-attempt times) updated by several processes (the drift flow, the live-signal worker,
`flywheel alerts send`). Those are small transactional row updates, which SQLite does atomically under a file lock
(WAL, `BEGIN IMMEDIATE`) and Delta does only by rewriting files per update. The outbox lives at
`AlertSettings.db` (default `$FLYWHEEL_HOME/alerts/outbox.sqlite`); `flywheel alerts list` shows it.

Guarantees:
- `enqueue` is idempotent: an alert has a stable dedup key (what it is about and its window), so re-running a drift
  job or replaying a stream never creates a second row for the same alert.
- Repeats are suppressed for `cooldown_s` per (segment, feature, alert kind): a suppressed alert is still
  recorded (status `suppressed`), never sent.
- A row is marked delivered only after Slack answered 2xx. A 429 waits for its Retry-After, a 5xx or a network
  error backs off exponentially (capped), and in both cases nothing is dropped: the row stays pending for ever
  until it goes out. Other 4xx (a revoked webhook, a bad payload) park the row as `failed` for a person to look at
  and `flywheel alerts resend`.
- Senders claim one row at a time, right before posting it, under a lease owned by that sender (a token) and long
  enough for one request (`SlackSender.lease_s`: twice the HTTP timeout plus a margin). Only the owner can mark
  its row delivered, retried or failed; a sender whose lease ran out (a stalled process) is told so and changes
  nothing. So two senders never post the same row at once, and a crashed sender's row comes back when its lease
  ends. Exactly once holds whenever Slack answers within the lease; a request whose answer is lost (timeout after
  Slack got it) is retried, so in that one case a message can arrive twice (Slack webhooks take no idempotency key).
- The webhook URL is a secret: it is never logged, printed or put in an error message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import socket
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

from flywheel.config import Secret, env_settings
from flywheel.errors import ConfigError, FlywheelError
from flywheel.schemas.alerts import Alert, AlertItem, shift_lines
from flywheel.warehouse.sqlite import transaction

log = logging.getLogger("flywheel.alerts")


class AlertError(FlywheelError):
    """The outbox could not be read or written, or an alert is malformed."""


@dataclass(frozen=True)
class AlertSettings:
    ENV_NAMES = {"slack_webhook_url": "FLYWHEEL_SLACK_WEBHOOK_URL"}

    slack_webhook_url: Secret | str = field(default="", repr=False)
    """FLYWHEEL_SLACK_WEBHOOK_URL: Slack incoming-webhook URL (a secret: never logged). Empty: alerts wait in
    the outbox until one is configured."""

    cooldown_s: float = 3600.0
    """FLYWHEEL_ALERTS_COOLDOWN_S: a repeat of an alert on the same segment, feature and kind within this many
    seconds is recorded as suppressed, not sent."""

    db: str = ""
    """FLYWHEEL_ALERTS_DB: the outbox (SQLite). Default: `$FLYWHEEL_HOME/alerts/outbox.sqlite`."""

    timeout_s: float = 10.0
    """FLYWHEEL_ALERTS_TIMEOUT_S: HTTP timeout of one webhook call."""

    backoff_s: float = 2.0
    """FLYWHEEL_ALERTS_BACKOFF_S: first wait after a 5xx or network error; doubles per failed attempt ..."""

    max_backoff_s: float = 300.0
    """FLYWHEEL_ALERTS_MAX_BACKOFF_S: ... up to this (also caps a Retry-After)."""

    def __post_init__(self) -> None:
        if not isinstance(self.slack_webhook_url, Secret):
            object.__setattr__(self, "slack_webhook_url", Secret(str(self.slack_webhook_url)))
        problem = _webhook_problem(self.webhook.reveal())
        if problem:
            # Name the variable and the defect only: the URL's path is the credential.
            raise ConfigError(f"FLYWHEEL_SLACK_WEBHOOK_URL is malformed: {problem} (expected "
                              "https://hooks.slack.com/services/...)", variable="FLYWHEEL_SLACK_WEBHOOK_URL")
        for name in ("cooldown_s", "timeout_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"FLYWHEEL_ALERTS_{name.upper()} must not be negative")

    @property
    def webhook(self) -> Secret:
        assert isinstance(self.slack_webhook_url, Secret)
        return self.slack_webhook_url

    def db_path(self, home: Path) -> Path:
        return Path(self.db) if self.db else Path(home) / "alerts" / "outbox.sqlite"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AlertSettings":
        return env_settings(cls, "FLYWHEEL_ALERTS_", environ)


def _webhook_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, in words that never quote it; None when it is usable (or empty)."""
    if not url:
        return None
    if url != url.strip() or any(c.isspace() or ord(c) < 32 for c in url):
        return "it contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return "it does not parse as a URL (check the host and port)"
    if parts.scheme.lower() not in ("http", "https"):
        return "its scheme must be http or https" if parts.scheme else "it has no scheme (http:// or https://)"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "its port must be between 1 and 65535"
    return None


def _fmt_score(item: AlertItem) -> str:
    if item.score is None:
        return item.method
    return f"{item.method} {item.score:.3g} (threshold {item.threshold or 0:g})"


def slack_message(alert: Alert) -> dict[str, Any]:
    """The Block Kit payload of an alert (with a plain `text` fallback for notifications): what moved, what else
    changed in the segment (its categorical shifts: the likely cause), the report (a link when it is a URL) and
    what the flywheel does next."""
    what = {"data-drift": "Data drift (what users send)", "model-drift": "Model drift (outputs and feedback)"}
    title = alert.title or what.get(alert.kind, f"Live signal: {alert.kind.removeprefix('live:')}")
    lines = [f"• `{i.feature}`: {i.before} → {i.after}  ({_fmt_score(i)})"
             for i in alert.items[:10]]
    if len(alert.items) > 10:
        lines.append(f"… and {len(alert.items) - 10} more")
    changed = shift_lines(alert.shifts)
    nxt = "Next: " + "; ".join(alert.next_steps) if alert.next_steps else ""
    report = alert.report
    report_text = (f"<{report}|Evidently report>" if report.startswith(("http://", "https://")) else
                   f"Report: `{report}`") if report else "No report for this alert"
    text = f"{title}: {alert.segment}, {len(alert.items)} moved in {alert.window}"
    if changed:
        text += "; changed: " + "; ".join(changed[:3]).replace("`", "")
    if nxt:
        text += ". " + nxt.replace("`", "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Segment*\n{alert.segment}"},
            {"type": "mrkdwn", "text": f"*Window*\n{alert.window}"},
        ]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*What moved*\n" + "\n".join(lines)}},
    ]
    if changed:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*What changed in the segment*\n"
                                                   + "\n".join(f"• {c}" for c in changed[:10])}})
    elements = [{"type": "mrkdwn", "text": report_text}]
    if nxt:
        elements.append({"type": "mrkdwn", "text": nxt[:2000]})
    blocks.append({"type": "context", "elements": elements})
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------------------------------- outbox

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY,
  dedup_key TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  segment TEXT NOT NULL,
  window TEXT NOT NULL,
  payload TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'suppressed', 'failed')),
  created_at REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at REAL NOT NULL,
  lease_until REAL,
  lease_owner TEXT,
  last_status INTEGER,
  last_error TEXT,
  delivered_at REAL,
  suppressed_by TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS cooldown (key TEXT PRIMARY KEY, last_at REAL NOT NULL, alert_id INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    dedup_key: str
    kind: str
    segment: str
    window: str
    status: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    delivered_at: float | None
    alert: Alert


class Outbox:
    def __init__(self, path: str | Path, cooldown_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=30)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)  # idempotent; executescript commits on its own
                cols = {r[1] for r in con.execute("PRAGMA table_info(outbox)")}
                if "lease_owner" not in cols:  # an outbox created before leases had owners
                    con.execute("ALTER TABLE outbox ADD COLUMN lease_owner TEXT")
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise AlertError(f"cannot create the alert outbox {self.path}: {exc}") from exc

    @classmethod
    def from_settings(cls, home: Path, settings: AlertSettings) -> "Outbox":
        return cls(settings.db_path(home), settings.cooldown_s)

    def _tx(self, immediate: bool = False) -> ContextManager[sqlite3.Connection]:
        # synchronous=FULL there: an enqueued alert survives a power cut
        return transaction(self.path, f"the alert outbox {self.path}", AlertError, immediate)

    def enqueue(self, alert: Alert) -> tuple[int, str]:
        """Record `alert` (idempotent by its dedup key). Returns (row id, status): `pending`, or `suppressed` when
        every item is in cooldown; items in cooldown are dropped from a pending alert's message."""
        now = self.clock()
        with self._tx(immediate=True) as con:
            row = con.execute("SELECT id, status FROM outbox WHERE dedup_key = ?", (alert.dedup_key,)).fetchone()
            if row:
                return int(row[0]), str(row[1])
            fresh: list[AlertItem] = []
            cooling: list[AlertItem] = []
            for item in alert.items:
                hit = con.execute("SELECT last_at FROM cooldown WHERE key = ?", (alert.cooldown_key(item),)).fetchone()
                (cooling if hit and now - float(hit[0]) < self.cooldown_s else fresh).append(item)
            status = "pending" if fresh else "suppressed"
            sent = alert.with_items(tuple(fresh) or alert.items)
            cur = con.execute(
                "INSERT INTO outbox (dedup_key, kind, segment, window, payload, status, created_at, "
                "next_attempt_at, suppressed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (alert.dedup_key, alert.kind, alert.segment, alert.window, sent.to_json(), status, now, now,
                 ",".join(i.feature for i in cooling) or None))
            rid = int(cur.lastrowid or 0)
            for item in fresh:
                con.execute("INSERT INTO cooldown (key, last_at, alert_id) VALUES (?, ?, ?) ON CONFLICT (key) DO "
                            "UPDATE SET last_at = excluded.last_at, alert_id = excluded.alert_id",
                            (alert.cooldown_key(item), now, rid))
        log.info("alert %s on %s: %s", alert.kind, alert.segment, status)
        return rid, status

    def rows(self, status: str | None = None, limit: int = 100) -> list[OutboxRow]:
        with self._tx() as con:
            q = ("SELECT id, dedup_key, kind, segment, window, status, created_at, attempts, next_attempt_at, "
                 "last_status, last_error, delivered_at, payload FROM outbox")
            args: tuple[Any, ...] = ()
            if status:
                q += " WHERE status = ?"
                args = (status,)
            rows = con.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [OutboxRow(*r[:-1], Alert.from_json(r[-1])) for r in rows]  # type: ignore[call-arg]

    def counts(self) -> dict[str, int]:
        with self._tx() as con:
            return {s: n for s, n in con.execute("SELECT status, count(*) FROM outbox GROUP BY status")}

    def resend(self, ids: list[int] | None = None, failed: bool = False) -> int:
        """Queue rows again: the given ids (any status), or every failed row. Returns how many."""
        now = self.clock()
        with self._tx(immediate=True) as con:
            if ids:
                marks = ",".join("?" * len(ids))
                cur = con.execute(f"UPDATE outbox SET status = 'pending', next_attempt_at = ?, lease_until = NULL "
                                  f"WHERE id IN ({marks})", (now, *ids))
            elif failed:
                cur = con.execute("UPDATE outbox SET status = 'pending', next_attempt_at = ?, lease_until = NULL "
                                  "WHERE status = 'failed'", (now,))
            else:
                return 0
            return cur.rowcount

    def claim(self, limit: int = 20, lease_s: float = 60.0, owner: str = "") -> list[OutboxRow]:
        """Take up to `limit` due rows for `owner` (a crashed sender's rows come back when its lease ends). Hold a
        lease only as long as you can keep it: `SlackSender` claims one row right before each post."""
        now = self.clock()
        with self._tx(immediate=True) as con:
            ids = [r[0] for r in con.execute(
                "SELECT id FROM outbox WHERE (status = 'pending' AND next_attempt_at <= ?) OR "
                "(status = 'sending' AND lease_until < ?) ORDER BY id LIMIT ?", (now, now, limit))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            con.execute(f"UPDATE outbox SET status = 'sending', lease_until = ?, lease_owner = ? "
                        f"WHERE id IN ({marks})", (now + lease_s, owner, *ids))
        return self._by_ids(ids)

    def claim_one(self, owner: str, lease_s: float) -> OutboxRow | None:
        """The oldest due row, leased to `owner` for `lease_s` seconds, or None when nothing is due."""
        rows = self.claim(1, lease_s, owner)
        return rows[0] if rows else None

    def defer(self, at: float, reason: str) -> int:
        """Hold every due pending row until `at` (the webhook is unwell: the rest wait with it, in order)."""
        with self._tx(immediate=True) as con:
            return con.execute("UPDATE outbox SET next_attempt_at = ?, last_error = ? WHERE status = 'pending' "
                               "AND next_attempt_at < ?", (at, reason[:500], at)).rowcount

    def _by_ids(self, ids: list[int]) -> list[OutboxRow]:
        marks = ",".join("?" * len(ids))
        with self._tx() as con:
            rows = con.execute(
                "SELECT id, dedup_key, kind, segment, window, status, created_at, attempts, next_attempt_at, "
                f"last_status, last_error, delivered_at, payload FROM outbox WHERE id IN ({marks}) ORDER BY id",
                ids).fetchall()
        return [OutboxRow(*r[:-1], Alert.from_json(r[-1])) for r in rows]  # type: ignore[call-arg]

    # The three outcomes below change a row only while `owner` still holds its lease, and return whether they
    # did: False means the lease ran out and another sender may have taken the row over.
    _OWNED = " WHERE id = ? AND status = 'sending' AND lease_owner = ?"

    def mark_delivered(self, rid: int, http_status: int, owner: str = "") -> bool:
        with self._tx(immediate=True) as con:
            return con.execute("UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1, "
                               "last_status = ?, last_error = NULL, lease_until = NULL, lease_owner = NULL"
                               + self._OWNED, (self.clock(), http_status, rid, owner)).rowcount == 1

    def retry_later(self, rid: int, at: float, http_status: int | None, error: str, owner: str = "") -> bool:
        with self._tx(immediate=True) as con:
            return con.execute("UPDATE outbox SET status = 'pending', next_attempt_at = ?, attempts = attempts + 1, "
                               "last_status = ?, last_error = ?, lease_until = NULL, lease_owner = NULL"
                               + self._OWNED, (at, http_status, error[:500], rid, owner)).rowcount == 1

    def mark_failed(self, rid: int, http_status: int | None, error: str, owner: str = "") -> bool:
        with self._tx(immediate=True) as con:
            return con.execute("UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_status = ?, "
                               "last_error = ?, lease_until = NULL, lease_owner = NULL" + self._OWNED,
                               (http_status, error[:500], rid, owner)).rowcount == 1

    def pending(self) -> int:
        with self._tx() as con:
            return int(con.execute("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0])

    def next_due(self) -> float | None:
        with self._tx() as con:
            r = con.execute("SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending'").fetchone()
            return float(r[0]) if r and r[0] is not None else None


# --------------------------------------------------------------------------------------------------- sending


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    waiting_until: float | None = None
    lost_leases: int = 0
    """Posts whose lease ran out before the answer came (the row may have been posted twice)."""


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - now, 0.0)
        except (TypeError, ValueError):
            return None


class SlackSender:
    """Posts outbox rows to the webhook, honouring 429 Retry-After and backing off on 5xx and network errors."""

    def __init__(self, outbox: Outbox, settings: AlertSettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # One request lasts at most about the timeout (connect, then each read): twice that plus a margin covers
        # a slow answer, and no lease is held across more than one request.
        self.lease_s = 2 * settings.timeout_s + 5.0

    def _post(self, payload: dict[str, Any]) -> tuple[int | None, dict[str, str], str]:
        url = self.settings.webhook.reveal()
        req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                return resp.status, dict(resp.headers), ""
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode("utf-8", "replace") if exc.fp else ""
            return exc.code, dict(exc.headers or {}), body
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            # never let the URL into an error message
            return None, {}, str(reason).replace(url, "<webhook>")

    def deliver(self, limit: int = 50) -> DeliveryReport:
        """Send up to `limit` rows that are due now, claiming each right before its post. Stops at the first
        429/5xx/network error: the webhook is unwell, so every due row waits with it (their order is kept)."""
        rep = DeliveryReport()
        if not self.settings.webhook:
            return rep
        for _ in range(limit):
            row = self.outbox.claim_one(self.owner, self.lease_s)
            if row is None:
                break
            status, headers, body = self._post(slack_message(row.alert))
            now = self.outbox.clock()
            if status is not None and 200 <= status < 300:
                if self.outbox.mark_delivered(row.id, status, self.owner):
                    rep.delivered += 1
                else:
                    self._lost(row, rep)
                continue
            if status == 429 or status is None or status >= 500:
                if status == 429:
                    ra = _retry_after({k.lower(): v for k, v in headers.items()}.get("retry-after"), now)
                    wait = min(ra if ra is not None else self.settings.backoff_s, self.settings.max_backoff_s)
                else:
                    wait = min(self.settings.backoff_s * 2 ** row.attempts, self.settings.max_backoff_s)
                    wait *= 0.8 + 0.4 * random.random()  # jitter, so many senders do not return in step
                at = now + wait
                err = f"HTTP {status}: {body[:200]}" if status else f"network error: {body[:200]}"
                if not self.outbox.retry_later(row.id, at, status, err, self.owner):
                    self._lost(row, rep)
                self.outbox.defer(at, "waiting for the webhook to recover")
                rep.retried += 1
                rep.waiting_until = at
                log.warning("Slack webhook answered %s; alert %d retries in %.1f s", status or "nothing", row.id,
                            wait)
                break
            if not self.outbox.mark_failed(row.id, status, f"HTTP {status}: {body[:200]}", self.owner):
                self._lost(row, rep)
            rep.failed += 1
            log.error("Slack webhook rejected alert %d with HTTP %s (%s); `flywheel alerts resend %d` after fixing",
                      row.id, status, body[:200], row.id)
        return rep

    def _lost(self, row: OutboxRow, rep: DeliveryReport) -> None:
        rep.lost_leases += 1
        log.warning("alert %d: the lease of %.0f s ran out before the webhook answered; another sender may have "
                    "posted it too (raise FLYWHEEL_ALERTS_TIMEOUT_S if answers are this slow)", row.id, self.lease_s)

    def drain(self, timeout_s: float, poll_s: float = 0.2) -> DeliveryReport:
        """Deliver until nothing is pending or `timeout_s` passes, sleeping until the next attempt is due."""
        total = DeliveryReport()
        deadline = time.monotonic() + timeout_s
        while self.settings.webhook and self.outbox.pending():
            rep = self.deliver()
            total.delivered += rep.delivered
            total.retried += rep.retried
            total.failed += rep.failed
            total.lost_leases += rep.lost_leases
            if time.monotonic() >= deadline:
                break
            due = self.outbox.next_due()
            wait = poll_s if due is None else min(max(due - self.outbox.clock(), 0.0), poll_s * 10)
            if rep.delivered == 0:
                time.sleep(min(max(wait, 0.01), max(deadline - time.monotonic(), 0.0)))
        total.waiting_until = self.outbox.next_due()
        return total
