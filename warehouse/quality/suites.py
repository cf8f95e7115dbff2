"""Expectation suites as reviewable files: `schemas/expectations/<table>.yaml`, plus a team's own files.

The format is described in schemas/expectations/README.md. Loading resolves `${name}` parameters, expands the PII
family into flag columns and expectations, and checks every expectation type against Great Expectations' catalogue
by name, so a typo fails at load time with the file named, not halfway through a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from flywheel import schemas as schemas_package
from flywheel.errors import FlywheelError
from flywheel.warehouse import pii

BUILTIN_DIR = Path(schemas_package.__file__).resolve().parent / "expectations"
SEVERITIES = ("critical", "warning", "info")
COLUMN_KEYS = ("column", "column_A", "column_B", "column_list")
_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SuiteError(FlywheelError):
    """A suite file is malformed; the message names the file and the entry. Terminal: fix the file."""


@dataclass(frozen=True)
class ExpectationSpec:
    type: str
    """snake_case GX expectation type, e.g. `expect_column_values_to_be_between`."""
    kwargs: dict[str, Any]
    severity: str = "critical"
    notes: str = ""
    source: str = ""
    """The file it came from."""

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for key in COLUMN_KEYS:
            value = self.kwargs.get(key)
            cols += value if isinstance(value, list) else [value] if isinstance(value, str) else []
        return cols

    @property
    def column(self) -> str:
        return ",".join(self.columns)


@dataclass(frozen=True)
class Suite:
    table: str
    derive: dict[str, str] = field(default_factory=dict)
    """Per-row columns: name -> DuckDB SQL expression over the table's columns."""
    pii_flags: dict[str, tuple[str, str]] = field(default_factory=dict)
    """PII flag columns: name -> (kind, text column)."""
    columns: tuple[str, ...] = ()
    """Extra table columns to load."""
    expectations: tuple[ExpectationSpec, ...] = ()
    files: tuple[str, ...] = ()

    def needed_columns(self, table_columns: list[str]) -> list[str]:
        """Table columns the expectations read (derived columns are computed, not loaded)."""
        wanted = set(self.columns)
        for e in self.expectations:
            wanted.update(c for c in e.columns if c not in self.derive and c not in self.pii_flags)
        missing = wanted - set(table_columns)
        if missing:
            raise SuiteError(f"suite {self.table!r} ({', '.join(self.files)}) names columns the table does not have: "
                             f"{', '.join(sorted(missing))}")
        return [c for c in table_columns if c in wanted]


def load_suites(params: Mapping[str, Any], extra_dir: str | Path | None = None,
                builtin_dir: Path = BUILTIN_DIR) -> dict[str, Suite]:
    """The suites by table: the built-in files, with the files of `extra_dir` merged in."""
    files = sorted(builtin_dir.glob("*.yaml"))
    if extra_dir:
        extra = Path(extra_dir)
        if not extra.is_dir():
            raise SuiteError(f"FLYWHEEL_QUALITY_SUITES_DIR={str(extra)!r} is not a directory")
        files += sorted(extra.glob("*.yaml")) + sorted(extra.glob("*.yml"))
    suites: dict[str, Suite] = {}
    for path in files:
        part = _load_file(path, params)
        prev = suites.get(part.table)
        suites[part.table] = part if prev is None else _merge(prev, part)
    return suites


def _merge(a: Suite, b: Suite) -> Suite:
    clash = (set(a.derive) | set(a.pii_flags)) & (set(b.derive) | set(b.pii_flags))
    if clash:
        raise SuiteError(f"{b.files[0]} derives columns {', '.join(sorted(clash))} that {', '.join(a.files)} "
                         "already derives; pick other names")
    return Suite(a.table, {**a.derive, **b.derive}, {**a.pii_flags, **b.pii_flags},
                 tuple(dict.fromkeys(a.columns + b.columns)), a.expectations + b.expectations, a.files + b.files)


def _load_file(path: Path, params: Mapping[str, Any]) -> Suite:
    src = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"cannot read suite file {src}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("table"), str):
        raise SuiteError(f"suite file {src} must be a mapping with a `table` key")
    unknown = set(doc) - {"table", "columns", "derive", "pii", "expectations"}
    if unknown:
        raise SuiteError(f"suite file {src}: unknown keys {', '.join(sorted(unknown))}")
    doc = _resolve(doc, params, src)
    derive = doc.get("derive") or {}
    if not isinstance(derive, dict) or not all(isinstance(v, str) and _NAME.match(k) for k, v in derive.items()):
        raise SuiteError(f"suite file {src}: `derive` must map column names to SQL expressions")
    expectations = [_expectation(item, src, i) for i, item in enumerate(doc.get("expectations") or [])]
    flags: dict[str, tuple[str, str]] = {}
    spec = doc.get("pii")
    if spec:
        if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list):
            raise SuiteError(f"suite file {src}: `pii` needs a list of `columns`")
        kinds = spec.get("kinds") or list(pii.KINDS)
        bad = [k for k in kinds if k not in pii.KINDS]
        if bad:
            raise SuiteError(f"suite file {src}: unknown PII kinds {bad}; the kinds are {', '.join(pii.KINDS)}")
        for column in spec["columns"]:
            for kind in kinds:
                name = f"pii_{kind}_in_{column}"
                flags[name] = (kind, column)
                item = {"type": "expect_column_values_to_be_in_set", "column": name, "value_set": [False],
                        "severity": spec.get("severity", "warning"),
                        "notes": f"texts in `{column}` containing {kind.replace('_', ' ')}"}
                if "mostly" in spec:
                    item["mostly"] = spec["mostly"]
                expectations.append(_expectation(item, src, len(expectations)))
    columns = doc.get("columns") or []
    return Suite(doc["table"], dict(derive), flags, tuple(columns), tuple(expectations), (src,))


def _expectation(item: Any, src: str, index: int) -> ExpectationSpec:
    where = f"suite file {src}, expectation #{index + 1}"
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise SuiteError(f"{where}: each expectation is a mapping with a `type`")
    kwargs = {k: v for k, v in item.items() if k not in ("type", "severity", "notes")}
    severity = str(item.get("severity", "critical")).lower()
    if severity not in SEVERITIES:
        raise SuiteError(f"{where}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    spec = ExpectationSpec(item["type"], kwargs, severity, str(item.get("notes", "")), src)
    gx_class(spec.type, where)
    return spec


def gx_class(type_name: str, where: str = "") -> type:
    """The GX expectation class of a snake_case type name."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, "".join(part.capitalize() for part in type_name.split("_")), None)
    if cls is None or getattr(cls, "expectation_type", None) != type_name:
        raise SuiteError(f"{where}: {type_name!r} is not a Great Expectations expectation")
    return cls


def _resolve(value: Any, params: Mapping[str, Any], src: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, params, src) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params, src) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    for name in _PARAM.findall(value):
        if name not in params:
            raise SuiteError(f"suite file {src}: unknown parameter ${{{name}}}; known: {', '.join(sorted(params))}")
    whole = _PARAM.fullmatch(value.strip())
    if whole:
        return params[whole.group(1)]
    return _PARAM.sub(lambda m: str(params[m.group(1)]), value)
