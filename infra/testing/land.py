"""Land event dicts straight into the lake, without Kafka: for tests, benchmarks and backfills of known-good data.

Events go through the same vectorized contract validator as the landing worker (`BatchValidator`), so the rows
are typed exactly as ingested rows are. Each row gets Kafka-like coordinates on a synthetic topic
(`<prefix>.inference` / `<prefix>.feedback`, partition 0, consecutive offsets from `start_offset`), unique as long
as callers give each call its own offset range. No watermark is advanced (`next_offsets` is empty).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa

from flywheel.errors import ContractViolation
from flywheel.schemas.arrow import SCHEMAS, landed_rows
from flywheel.schemas.contract import EVENT_TYPES, event_type_of
from flywheel.schemas.validation import BatchValidator
from flywheel.warehouse.lake import Lake

TABLE_OF = {"inference": "inferences", "feedback": "feedback"}


def to_rows(events: Iterable[dict[str, Any]], *, ingested_at: datetime | None = None, start_offset: int = 0,
            topic_prefix: str = "synthetic") -> dict[str, pa.Table]:
    """Typed lake rows per table (`inferences`, `feedback`) for `events`.

    Raises `ContractViolation` for the first event the contract rejects: this path is for data known to be valid
    (inject defects into the returned Arrow tables instead). `ingested_at` (default now) is what `Lake.commit`
    replaces with its own stamp unless it is called with `keep_ingested_at=True`.
    """
    ingested_at = ingested_at or datetime.now(timezone.utc)
    by_type: dict[str, list[bytes]] = {"inference": [], "feedback": []}
    for ev in events:
        et = event_type_of(ev)
        if et is None:
            raise ContractViolation("unknown", ["cannot tell the event type"], ev)
        by_type[et.name].append(json.dumps(ev, ensure_ascii=False).encode())
    out: dict[str, pa.Table] = {}
    offset = start_offset
    for name, payloads in by_type.items():
        table = TABLE_OF[name]
        if not payloads:
            out[table] = SCHEMAS[table].empty_table()
            continue
        typed, reasons = BatchValidator(EVENT_TYPES[name], max_bytes=1 << 30).validate(pa.array(payloads, pa.binary()))
        for i, reason in enumerate(reasons):
            if reason is not None:
                raise ContractViolation(name, [reason], json.loads(payloads[i]))
        n = typed.num_rows
        out[table] = landed_rows(table, typed, topic=f"{topic_prefix}.{name}",
                                 partitions=pa.array([0] * n, pa.int32()),
                                 offsets=pa.array(range(offset, offset + n), pa.int64()), ingested_at=ingested_at)
        offset += n
    return out


def land(lake: Lake, events: Iterable[dict[str, Any]], **kwargs: Any) -> dict[str, int]:
    """Validate `events` and commit them to the lake (created if needed); returns rows landed per table.

    The commit stamps the rows' `_ingested_at`, as it does for the landing worker, unless `ingested_at` is given:
    then the rows keep it (a backfill at a chosen landing time; see `Lake.commit(keep_ingested_at=True)`)."""
    lake.ensure()
    landed = {}
    keep = kwargs.get("ingested_at") is not None
    for table, rows in to_rows(events, **kwargs).items():
        if rows.num_rows:
            lake.commit(table, rows, {}, keep_ingested_at=keep)
        landed[table] = rows.num_rows
    return landed
