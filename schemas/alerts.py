"""The alert contract: one typed record that every producer of alerts builds (batch drift runs, live signals, and
later stages), and the sink protocol they hand it to.

Producers never import the outbox that delivers alerts (`flywheel.warehouse.alerts`): they take an `AlertSink`
from the caller, which is how drift (in the warehouse) and live signals (in the streams) share one delivery path
without an import pointing back up. An alert is stored as JSON (`to_json`/`from_json`); fields are added, never
renamed, so rows an older build stored keep loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal, Protocol

DriftKind = Literal["data", "model"]


@dataclass(frozen=True)
class AlertItem:
    """One thing that moved: a descriptor, feedback rate or live signal, from `before` to `after`."""

    feature: str
    before: str = "?"
    """Human-readable reference value, e.g. `812 chars (mean)` or `latin 97%`."""
    after: str = "?"
    method: str = ""
    """How the change was measured (an effect size such as `wasserstein`, or `ratio`, `rate increase`)."""
    score: float | None = None
    threshold: float | None = None
    reason: str = ""
    """Why it alerts (`sustained: ...`, `large: ...`), where a decision rule says."""
    n_reference: int | None = None
    n_current: int | None = None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "AlertItem":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]


@dataclass(frozen=True)
class CategoricalShift:
    """A value of a categorical column (`model_version`, `prompt_version`, `provider`, ...) whose share of a
    segment's traffic moved between the reference and the current window: the likely cause of what moved."""

    column: str
    value: str
    before: float
    """Share of the segment's reference rows with this value (0-1); 0 for a value new in the current window."""
    after: float
    """Share of the segment's current rows with this value (0-1)."""

    @property
    def new(self) -> bool:
        return self.before == 0 and self.after > 0

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "CategoricalShift":
        return cls(str(d["column"]), str(d["value"]), float(d["before"]), float(d["after"]))  # type: ignore[arg-type]


def _pct(share: float) -> str:
    return f"{share:.0%}" if share == 0 or share >= 0.01 else "<1%"


def shift_lines(shifts: tuple[CategoricalShift, ...]) -> list[str]:
    """One line per column, as a person reads it: `` `model_version` 0314 → 0125, 100% of the window (new)`` when
    one value took over from another, else each value that gained or lost share with both shares."""
    lines = []
    for column in dict.fromkeys(s.column for s in shifts):
        mine = [s for s in shifts if s.column == column]
        gained = sorted((s for s in mine if s.after > s.before), key=lambda s: s.before - s.after)
        lost = sorted((s for s in mine if s.after < s.before), key=lambda s: s.after - s.before)
        if len(gained) == 1 and lost:
            g = gained[0]
            was = " (new)" if g.new else f" (was {_pct(g.before)})"
            lines.append(f"`{column}` {lost[0].value} → {g.value}, {_pct(g.after)} of the window{was}")
            continue
        parts = [f"{s.value} {_pct(s.before)} → {_pct(s.after)}" + (" (new)" if s.new else "")
                 for s in gained + lost]
        lines.append(f"`{column}` " + ", ".join(parts) + " of the window")
    return lines


@dataclass(frozen=True)
class Alert:
    """What a person needs to act: which segment, what moved (before, after, effect size), when, and the report."""

    kind: str
    """`data-drift`, `model-drift` or `live:<signal>`."""
    segment: str
    """`app=a,model=m` (or `all`)."""
    window: str
    """The window the alert is about, `START/END` in ISO 8601."""
    items: tuple[AlertItem, ...]
    report: str = ""
    """Where the report of this alert is: a URL, or a path on the machine that wrote it."""
    title: str = ""
    level: str = ""
    """The segment's columns, comma-separated (drift alerts); empty for all traffic."""
    shifts: tuple[CategoricalShift, ...] = ()
    """What else changed in the segment between the windows (drift alerts): values of its categorical columns
    that are new or whose share moved, most moved first."""
    next_steps: tuple[str, ...] = ()
    """What the flywheel does next about this alert, in words (the policies and automations it starts, or
    `no policy matches: nothing runs automatically`); empty when the producer could not tell."""

    @property
    def drift_kind(self) -> DriftKind | None:
        """`data` or `model` for a drift alert, else None."""
        kind = self.kind.removesuffix("-drift")
        return kind if kind in ("data", "model") and self.kind.endswith("-drift") else None  # type: ignore[return-value]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(i.feature for i in self.items)

    @property
    def dedup_key(self) -> str:
        """Stable for what the alert is about and its window, so a re-run never enqueues it twice."""
        feats = ",".join(sorted(self.features))
        return hashlib.sha256(f"{self.kind}|{self.segment}|{self.window}|{feats}".encode()).hexdigest()[:32]

    def cooldown_key(self, item: AlertItem) -> str:
        return f"{self.segment}|{item.feature}|{self.kind}"

    def with_items(self, items: tuple[AlertItem, ...]) -> "Alert":
        return dataclasses.replace(self, items=items)

    def with_report(self, report: str) -> "Alert":
        return dataclasses.replace(self, report=report)

    def with_next_steps(self, steps: tuple[str, ...]) -> "Alert":
        return dataclasses.replace(self, next_steps=steps)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "segment": self.segment, "window": self.window,
                           "items": [i.to_dict() for i in self.items], "report": self.report, "title": self.title,
                           "level": self.level, "shifts": [s.to_dict() for s in self.shifts],
                           "next_steps": list(self.next_steps)}, ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Alert":
        d = json.loads(text)
        return cls(d["kind"], d["segment"], d["window"], tuple(AlertItem.from_dict(i) for i in d["items"]),
                   d.get("report", ""), d.get("title", ""), d.get("level", ""),
                   tuple(CategoricalShift.from_dict(x) for x in d.get("shifts", ())), tuple(d.get("next_steps", ())))


class AlertSink(Protocol):
    """Where producers hand alerts. `enqueue` must be idempotent by `Alert.dedup_key` and durable when it returns;
    it returns the alert's id in the sink and its state (`pending`, or `suppressed` by a cooldown)."""

    def enqueue(self, alert: Alert) -> tuple[int, str]: ...
