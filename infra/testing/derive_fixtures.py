"""Rebuild the test fixtures in `infra/testing/data/` from a `shared/data` checkout (see data/README.md).

    python -m flywheel.infra.testing.derive_fixtures /path/to/shared/data

Only what the scenarios and tests read is kept: every (prompt, output) of the OpenAssistant sampling reports, in
file order, and the last human turn with the chosen answer of LLaMA-Factory's dpo_zh_demo. Outputs are kept as
written (not stripped): the descriptor tests count their whitespace. Gzip level 9 and a fixed mtime make the
files byte-identical on every rebuild.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Iterable

DATA = Path(__file__).parent / "data"
ANSWERS = "oasst_sampling_answers.jsonl.gz"
DPO_ZH = "dpo_zh_chosen.jsonl.gz"


def _write(path: Path, rows: Iterable[dict[str, str]]) -> int:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0,
                                                 filename="") as fh:
        fh.write(text)
    return path.stat().st_size


def derive(shared_data: Path, out: Path = DATA) -> dict[str, int]:
    """Write the fixtures under `out`; returns file name -> bytes."""
    out.mkdir(parents=True, exist_ok=True)
    answers = []
    for report in sorted((shared_data / "oasst_model_eval" / "sampling_reports").glob("*.json*")):
        data = json.loads(report.read_text(encoding="utf-8"))
        answers += [{"report": report.name, "prompt": p["prompt"], "output": o}
                    for p in data["prompts"] for r in p["results"] for o in r["outputs"]]
    zh = []
    for item in json.loads((shared_data / "llamafactory" / "dpo_zh_demo.json").read_text(encoding="utf-8")):
        human = [c["value"] for c in item["conversations"] if c["from"] == "human"]
        if human:
            zh.append({"prompt": human[-1], "output": item["chosen"]["value"]})
    return {ANSWERS: _write(out / ANSWERS, answers), DPO_ZH: _write(out / DPO_ZH, zh)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flywheel.infra.testing.derive_fixtures /path/to/shared/data")
    for name, size in derive(Path(sys.argv[1])).items():
        print(f"{name}: {size / 1e6:.2f} MB")
