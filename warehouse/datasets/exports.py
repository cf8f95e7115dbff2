"""Export formats: what a version's rows look like to the trainer that reads them.

Every writer takes one kind's rows per split (Arrow, the columns of `kinds.KIND_COLUMNS`) and writes files under
a directory, with names it alone chooses (`<format>/<split>.<ext>`), so nothing lands outside that directory.
Files are written deterministically: the same rows give the same bytes.

- `parquet`: `data/<split>.parquet`, the version's own data (every column, lineage included).
- `jsonl`: `jsonl/<split>.jsonl`, the same columns as JSON lines.
- `openai_chat` (sft): `{"messages": [..., {"role": "assistant", "content": ...}], "tools"?: [...]}` (OpenAI chat
  fine-tuning). Messages keep `name`, `tool_calls` and `tool_call_id` as landed, and a row whose inference offered
  tools has them at the top level, as OpenAI's fine-tuning format puts them (likewise `input.tools` for DPO and
  `tools` in the TRL rows, which TRL's conversational format accepts).
- `openai_dpo` (preference): `{"input": {"messages": [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}` (OpenAI preference fine-tuning).
- `trl`: conversational TRL rows: sft `{"messages"}`, preference `{"prompt", "chosen", "rejected"}` (lists of
  messages), kto `{"prompt", "completion", "label"}`.
- `hf`: a Hugging Face `datasets` directory: `hf/data/<split>.parquet` (the TRL columns plus `id`, or for eval
  every column; `tools` as JSON text) and `hf/README.md` whose YAML `configs` front matter names each split's file, so
  `datasets.load_dataset("<dir>/hf")` returns a `DatasetDict` of the splits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.errors import FlywheelError
from flywheel.warehouse.datasets.recipes import FORMATS

TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "additionalProperties": False,
             "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                            "function": {"type": "object", "required": ["name", "arguments"],
                                         "additionalProperties": False,
                                         "properties": {"name": {"type": "string"},
                                                        "arguments": {"type": "string"}}}}}
MESSAGE = {"type": "object", "required": ["role"], "additionalProperties": False,
           "properties": {"role": {"enum": ["system", "user", "assistant", "tool", "developer"]},
                          "content": {"type": "string"}, "name": {"type": "string"},
                          "tool_calls": {"type": "array", "minItems": 1, "items": TOOL_CALL},
                          "tool_call_id": {"type": "string", "minLength": 1}},
           # Only an assistant's tool calls stand in for content; a tool's answer names the call it answers.
           "allOf": [{"if": {"not": {"required": ["tool_calls"]}}, "then": {"required": ["content"]}},
                     {"if": {"required": ["tool_calls"]}, "then": {"properties": {"role": {"const": "assistant"}}}},
                     {"if": {"properties": {"role": {"const": "tool"}}},
                      "then": {"required": ["tool_call_id", "content"]}}]}
TOOL = {"type": "object", "required": ["type", "function"],
        "properties": {"type": {"const": "function"},
                       "function": {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string", "minLength": 1},
                                                   "description": {"type": "string"},
                                                   "parameters": {"type": "object"}}}}}
TOOLS = {"type": "array", "minItems": 1, "items": TOOL}
ASSISTANT = {"type": "array", "minItems": 1, "maxItems": 1,
             "items": {"type": "object", "required": ["role", "content"], "additionalProperties": False,
                       "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}
JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "openai_chat": {"type": "object", "required": ["messages"], "additionalProperties": False,
                    "properties": {"messages": {"type": "array", "minItems": 2, "items": MESSAGE}, "tools": TOOLS}},
    "openai_dpo": {"type": "object", "required": ["input", "preferred_output", "non_preferred_output"],
                   "additionalProperties": False,
                   "properties": {"input": {"type": "object", "required": ["messages"], "additionalProperties": False,
                                            "properties": {"messages": {"type": "array", "minItems": 1,
                                                                        "items": MESSAGE}, "tools": TOOLS}},
                                  "preferred_output": ASSISTANT, "non_preferred_output": ASSISTANT}},
    "trl_sft": {"type": "object", "required": ["messages"], "additionalProperties": False,
                "properties": {"messages": {"type": "array", "minItems": 2, "items": MESSAGE}, "tools": TOOLS}},
    "trl_preference": {"type": "object", "required": ["prompt", "chosen", "rejected"], "additionalProperties": False,
                       "properties": {"prompt": {"type": "array", "minItems": 1, "items": MESSAGE},
                                      "chosen": ASSISTANT, "rejected": ASSISTANT, "tools": TOOLS}},
    "trl_kto": {"type": "object", "required": ["prompt", "completion", "label"], "additionalProperties": False,
                "properties": {"prompt": {"type": "array", "minItems": 1, "items": MESSAGE},
                               "completion": ASSISTANT, "label": {"type": "boolean"}, "tools": TOOLS}},
}
"""JSON Schemas of each JSON-lines format, as their projects document them (see the module docstring)."""


class ExportError(FlywheelError):
    """A format cannot be written for this kind; `format` and `kind` say which."""

    def __init__(self, message: str, *, format: str, kind: str) -> None:
        self.format = format
        self.kind = kind
        super().__init__(message)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message in OpenAI's chat format: only the keys it has (a null content, or an empty `tool_calls`,
    is left out, as OpenAI's own examples of tool calls do). Rows of versions written before tool calls have only
    role and content."""
    out: dict[str, Any] = {"role": m["role"]}
    for key in ("name", "content", "tool_call_id"):
        if m.get(key) is not None:
            out[key] = m[key]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": c["type"],
                              "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                             for c in m["tool_calls"]]
    return out


def _msgs(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [_message(m) for m in row["messages"]]


def _tools(row: Mapping[str, Any]) -> dict[str, Any]:
    """`{"tools": [...]}` when the row's inference offered tools (their JSON, as landed), else nothing."""
    return {"tools": json.loads(row["tools"])} if row.get("tools") else {}


RECORDS: dict[tuple[str, str], Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    ("openai_chat", "sft"): lambda r: {"messages": _msgs(r) + _assistant(r["completion"]), **_tools(r)},
    ("openai_dpo", "preference"): lambda r: {"input": {"messages": _msgs(r), **_tools(r)},
                                             "preferred_output": _assistant(r["chosen"]),
                                             "non_preferred_output": _assistant(r["rejected"])},
    ("trl", "sft"): lambda r: {"messages": _msgs(r) + _assistant(r["completion"]), **_tools(r)},
    ("trl", "preference"): lambda r: {"prompt": _msgs(r), "chosen": _assistant(r["chosen"]),
                                      "rejected": _assistant(r["rejected"]), **_tools(r)},
    ("trl", "kto"): lambda r: {"prompt": _msgs(r), "completion": _assistant(r["completion"]),
                               "label": bool(r["label"]), **_tools(r)},
}
"""One exported record per row, per (format, kind)."""


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _write_jsonl(path: Path, records: Iterator[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=64 * 1024)


def write(fmt: str, kind: str, splits: Mapping[str, pa.Table], out: Path, name: str = "") -> list[Path]:
    """Write `splits` in `fmt` under `out`; returns the files written (relative to `out`)."""
    if fmt not in FORMATS[kind]:
        raise ExportError(f"format {fmt!r} does not fit a {kind} dataset; its formats are {', '.join(FORMATS[kind])}",
                          format=fmt, kind=kind)
    written: list[Path] = []
    for split, table in splits.items():
        if fmt == "parquet":
            rel = Path("data") / f"{split}.parquet"
            write_parquet(out / rel, table)
        elif fmt == "jsonl":
            rel = Path("jsonl") / f"{split}.jsonl"
            _write_jsonl(out / rel, (_plain(r) for r in table.to_pylist()))
        elif fmt == "hf":
            if table.num_rows == 0:  # `datasets` cannot read a Parquet file without rows: the card omits the split
                continue
            rel = Path("hf") / "data" / f"{split}.parquet"
            write_parquet(out / rel, _hf_table(kind, table))
        else:
            rel = Path(fmt) / f"{split}.jsonl"
            make = RECORDS[(fmt, kind)]
            _write_jsonl(out / rel, (make(r) for r in table.to_pylist()))
        written.append(rel)
    if fmt == "hf":
        (out / "hf").mkdir(parents=True, exist_ok=True)
        (out / "hf" / "README.md").write_text(hf_card(name, kind, [k for k, t in splits.items() if t.num_rows]),
                                              encoding="utf-8")
        written.append(Path("hf") / "README.md")
    return written


def _hf_table(kind: str, table: pa.Table) -> pa.Table:
    if kind == "eval":
        return table
    # `tools` stay JSON text here: every tool's `parameters` is a different JSON Schema, which Arrow cannot type as
    # one column (the JSON-lines formats carry them as objects). A split with tools has the key in every record:
    # Arrow takes the columns from the first one.
    rows = table.to_pylist()
    tools = any(r.get("tools") for r in rows)
    records = [{"id": r["id"], **RECORDS[("trl", kind)](r), **({"tools": r.get("tools")} if tools else {})}
               for r in rows]
    return pa.Table.from_pylist(records) if records else pa.table({"id": pa.array([], pa.string())})


def hf_card(name: str, kind: str, splits: list[str]) -> str:
    files = "\n".join(f"  - split: {s}\n    path: data/{s}.parquet" for s in splits)
    return (f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n---\n\n# {name}\n\n"
            f"A flywheel `{kind}` dataset in TRL's conversational format. Load it with "
            "`datasets.load_dataset(\"<this directory>\")`.\n")
