"""Arrow (and so Parquet/Delta) schemas of the lake tables, derived from the contract.

A landed row is the event's typed fields, then `extra` (unknown fields kept verbatim), `event_date` (UTC day of
the event's own timestamp; the partition column), and its Kafka coordinates `_topic`, `_partition`, `_offset`
(and `_topic_id`, the topic's incarnation), which make every row traceable to one message and let a replay be
recognised. Lineage columns added later are nullable, so `Lake.ensure()` can add them to tables created earlier.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.schemas.contract import EVENT_TYPES, EventType, Field

TS = pa.timestamp("us", tz="UTC")
TOOL_CALLS = pa.list_(pa.struct([("id", pa.string()), ("type", pa.string()),
                                  ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))]))
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string()),
                               ("tool_call_id", pa.string()), ("tool_calls", TOOL_CALLS)]))
"""Chat messages in OpenAI's shape (see the contract); `arguments` is the JSON string the model produced."""

LINEAGE = [
    pa.field("_topic", pa.string(), nullable=False),
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_ingested_at", TS, nullable=False),
    pa.field("_topic_id", pa.string(), metadata={b"doc": b"The broker's id of the topic (KIP-516) the row was read "
              b"from: an in-memory broker that restarts, or a topic created again, reuses offsets from 0, so "
              b"(_topic, _partition, _offset) names one message only together with it. Null where the broker has "
              b"no topic ids, and in rows landed by builds before it."}),
]

_SCALAR = {"id": pa.string(), "string": pa.string(), "text": pa.string(), "enum": pa.string(), "timestamp": TS,
           "number": pa.float64(), "integer": pa.int64(), "object": pa.string(), "tools": pa.string()}


def _arrow_fields(f: Field) -> list[pa.Field]:
    doc = {b"doc": f.doc.encode()}
    if f.kind == "input":
        return [pa.field("input", pa.string(), metadata={b"doc": b"The prompt as text: the string given, or the "
                                                         b"last user message of a chat input."}),
                pa.field("input_messages", MESSAGES, metadata={b"doc": b"The chat messages, when the input was a "
                                                               b"list of messages."})]
    if f.kind == "scale":
        return [pa.field("scale_min", pa.float64(), metadata=doc), pa.field("scale_max", pa.float64(), metadata=doc)]
    return [pa.field(f.name, _SCALAR[f.kind], nullable=not f.required and f.default is None, metadata=doc)]


def table_schema(et: EventType) -> pa.Schema:
    fields: list[pa.Field] = []
    for f in et.fields:
        if f.name != "type":  # the tag only routes the event; the table already says what it is
            fields += _arrow_fields(f)
    fields += [
        pa.field("extra", pa.string(), metadata={b"doc": b"Fields this contract version does not know, as JSON."}),
        pa.field("event_date", pa.date32(), nullable=False),
        *LINEAGE,
    ]
    return pa.schema(fields)


QUARANTINE = pa.schema([
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("event_id", pa.string()),
    pa.field("payload", pa.binary()),
    pa.field("payload_bytes", pa.int64(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("kafka_timestamp", TS),
    pa.field("quarantine_date", pa.date32(), nullable=False),
    *LINEAGE,
])

SCHEMAS: dict[str, pa.Schema] = {
    "inferences": table_schema(EVENT_TYPES["inference"]),
    "feedback": table_schema(EVENT_TYPES["feedback"]),
    "quarantine": QUARANTINE,
}
def landed_rows(table: str, typed: pa.Table, *, topic: str, partitions: pa.Array, offsets: pa.Array,
                ingested_at: datetime, topic_id: str | None = None) -> pa.Table:
    """The rows of lake table `table` for typed events (the validators' output, one row per event, every field
    there): `event_date` from each event's own timestamp, and its Kafka coordinates. The one place lake rows of
    events are shaped, for the landing worker and for fixtures that land known-good events without Kafka."""
    n = typed.num_rows
    rows = (typed.append_column("event_date", pc.cast(typed["timestamp"], pa.date32()))
            .append_column("_topic", pa.repeat(pa.scalar(topic, pa.string()), n))
            .append_column("_partition", partitions.cast(pa.int32()))
            .append_column("_offset", offsets.cast(pa.int64()))
            .append_column("_ingested_at", pa.repeat(pa.scalar(ingested_at, TS), n))
            .append_column("_topic_id", pa.repeat(pa.scalar(topic_id, pa.string()), n)))
    return rows.select(SCHEMAS[table].names).cast(SCHEMAS[table])


def defaults(table: str) -> dict[str, object]:
    """The contract's defaults of a lake table's columns (`schema_version`, feedback's `source`, ...)."""
    et = EVENT_TYPES["inference" if table == "inferences" else "feedback"]
    return {f.name: f.default for f in et.fields if f.default is not None}


PARTITION_COLUMN = {"inferences": "event_date", "feedback": "event_date", "quarantine": "quarantine_date"}
