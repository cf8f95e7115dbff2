"""The import graph flows one way: each room imports only from itself and the rooms below it (README, Architecture).

Every `import flywheel...` of the package's code is checked, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"flywheel": "flywheel", "schemas": "flywheel.schemas", "streams": "flywheel.streams",
                "warehouse": "flywheel.warehouse", "flows": "flywheel.flows", "infra": "flywheel.infra"}

# room -> the rooms it may import from (besides itself). Lowest rooms first.
BASE = ("flywheel.config", "flywheel.errors", "flywheel.storage", "flywheel.durations", "flywheel.logs", "flywheel")
ROOMS: dict[str, set[str]] = {
    "base": set(),
    "schemas": {"base"},
    "warehouse": {"base", "schemas"},
    "warehouse.quality": {"base", "schemas", "warehouse"},
    "warehouse.drift": {"base", "schemas", "warehouse"},
    "warehouse.alerts": {"base", "schemas", "warehouse"},
    "warehouse.maintenance": {"base", "schemas", "warehouse"},
    # evaluation scores answers with drift's text descriptors (refusals): drift never imports evaluation
    "warehouse.evaluation": {"base", "schemas", "warehouse", "warehouse.drift"},
    "warehouse.releases": {"base", "schemas", "warehouse", "warehouse.evaluation"},
    "warehouse.jobs": {"base", "schemas", "warehouse", "warehouse.evaluation"},
    "warehouse.datasets": {"base", "schemas", "warehouse", "warehouse.quality"},
    # the overview reads every stage's record; nothing below the edge imports it
    "warehouse.report": {"base", "schemas", "warehouse", "warehouse.quality", "warehouse.drift", "warehouse.datasets",
                         "warehouse.evaluation", "warehouse.releases", "warehouse.jobs"},
    "streams": {"base", "schemas", "warehouse", "warehouse.alerts", "warehouse.releases"},
    "infra.broker": {"base"},
    "infra.testing": {"base", "schemas", "warehouse", "warehouse.quality", "warehouse.drift", "warehouse.alerts",
                      "streams"},
    "infra.demo": {"base", "schemas", "warehouse", "warehouse.quality", "warehouse.drift", "warehouse.alerts",
                   "warehouse.maintenance", "warehouse.datasets", "warehouse.evaluation", "warehouse.releases",
                   "streams", "infra.broker", "infra.testing"},
    "edge": {"*"},  # the CLI, its commands, the flows and flywheel.environment wire every room together
}


def room(module: str) -> str:
    if module in BASE:
        return "base"
    for prefix, name in (("flywheel.environment", "edge"), ("flywheel.cli", "edge"), ("flywheel.commands", "edge"),
                         ("flywheel.flows", "edge"), ("flywheel.infra.broker", "infra.broker"),
                         ("flywheel.infra.testing", "infra.testing"), ("flywheel.infra.demo", "infra.demo"),
                         ("flywheel.warehouse.quality", "warehouse.quality"),
                         ("flywheel.warehouse.drift", "warehouse.drift"),
                         ("flywheel.warehouse.alerts", "warehouse.alerts"),
                         ("flywheel.warehouse.maintenance", "warehouse.maintenance"),
                         ("flywheel.warehouse.evaluation", "warehouse.evaluation"),
                         ("flywheel.warehouse.releases", "warehouse.releases"),
                         ("flywheel.warehouse.jobs", "warehouse.jobs"),
                         ("flywheel.warehouse.datasets", "warehouse.datasets"),
                         ("flywheel.warehouse.report", "warehouse.report"),
                         ("flywheel.warehouse", "warehouse"), ("flywheel.streams", "streams"),
                         ("flywheel.schemas", "schemas"), ("flywheel.infra", "infra.broker")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module} belongs to no room: add it to tests/test_architecture.py and the README map")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("flywheel")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flywheel") \
                and node.level == 0:
            found.add(node.module)
            # `from flywheel.warehouse import lake` imports the module flywheel.warehouse.lake
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in _MODULES}
    return found


_MODULES = _modules()


def test_no_module_imports_from_a_room_above_it() -> None:
    wrong = []
    for module, path in sorted(_MODULES.items()):
        mine = room(module)
        allowed = ROOMS[mine]
        for imported in sorted(_imports(module, path)):
            theirs = room(imported)
            if theirs != mine and "*" not in allowed and theirs not in allowed:
                wrong.append(f"{module} ({mine}) imports {imported} ({theirs})")
    assert wrong == []


def test_every_module_has_a_room() -> None:
    assert {room(m) for m in _MODULES} <= set(ROOMS)
