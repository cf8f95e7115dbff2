"""The Python API for ML teams: load a version's split as Arrow, as a Hugging Face `Dataset`, diff two versions,
pull a version in a trainer's format.

    from flywheel.warehouse.datasets import load, to_hf
    train = load("support-sft@3", split="train")      # pyarrow.Table; .to_pandas() for pandas
    hf = to_hf("support-sft@3", split="train")         # datasets.Dataset

`settings` default to the environment's (FLYWHEEL_*), read once per call: these functions are an edge.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.warehouse.datasets import exports
from flywheel.warehouse.datasets.recipes import FORMATS
from flywheel.warehouse.datasets.registry import DatasetNotFound, Registry, VersionInfo
from flywheel.warehouse.datasets.settings import DatasetSettings


class PullError(FlywheelError):
    """`pull` refused to write: `out` names the directory and the message what to do."""

    def __init__(self, message: str, *, out: str) -> None:
        self.out = out
        super().__init__(message)


class UnsafePath(FlywheelError):
    """A file a version names, or a place `pull` would write, leads outside where it must stay (the version's
    directory, or `--out`): through `..`, an absolute path or a symlink. `path` names it; nothing was written."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message, path=path)


def _registry(core: Settings | None, ds: DatasetSettings | None) -> Registry:
    return Registry(core or Settings.from_env(), ds or DatasetSettings.from_env())


def _split(info: VersionInfo, split: str) -> Path:
    names = [s for s, _ in info.splits]
    if split not in names:
        raise DatasetNotFound(f"{info.ref} has no split {split!r}; its splits are {', '.join(names)}",
                              name=info.name, version=info.version)
    return _inside(info, Path("data") / f"{split}.parquet")


def _inside(info: VersionInfo, rel: Path) -> Path:
    """`info.path / rel`, refused when it leads out of the version's directory (`..`, an absolute path, a symlink
    to elsewhere): a registry someone tampered with must not hand out other files."""
    path = info.path / rel
    if rel.is_absolute() or not path.resolve().is_relative_to(info.path.resolve()):
        raise UnsafePath(f"{info.ref}: {rel} leads outside the version's directory {info.path} (a symlink or a "
                         "tampered manifest); restore the version or curate a new one", path=str(path))
    return path


def load(ref: str, split: str = "train", *, settings: Settings | None = None,
         ds: DatasetSettings | None = None) -> pa.Table:
    """The rows of one split of a published version (`name@3`, or `name` for the latest)."""
    info = _registry(settings, ds).get(ref)
    return pq.read_table(_split(info, split))


def to_hf(ref: str, split: str | None = None, *, settings: Settings | None = None,
          ds: DatasetSettings | None = None) -> Any:
    """A Hugging Face `datasets.Dataset` of one split (or a `DatasetDict` of all, `split=None`) in TRL's format."""
    import datasets  # an optional dependency: only this helper needs it

    info = _registry(settings, ds).get(ref)
    with tempfile.TemporaryDirectory(prefix=f"flywheel-{info.name}-") as tmp:
        hf_dir = _inside(info, Path("hf"))
        for f in hf_dir.rglob("*") if hf_dir.is_dir() else ():
            _inside(info, f.relative_to(info.path))  # `datasets` reads every file in it: none may lead elsewhere
        if not hf_dir.is_dir():  # the recipe did not export `hf`: build it from the data, outside the version
            exports.write("hf", info.kind, {s: pq.read_table(_split(info, s)) for s, _ in info.splits}, Path(tmp),
                          info.name)
            hf_dir = Path(tmp) / "hf"
        # A private cache: every version's directory has the same layout, and a shared cache can serve one
        # version's rows for another's. In memory, so nothing outlives the call.
        loaded = datasets.load_dataset(str(hf_dir), cache_dir=str(Path(tmp) / "cache"), keep_in_memory=True)
    return loaded if split is None else loaded[split]


@dataclass(frozen=True)
class SplitDiff:
    split: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


def diff(a: str, b: str, *, settings: Settings | None = None, ds: DatasetSettings | None = None) -> list[SplitDiff]:
    """Row ids added and removed per split from version `a` to version `b`."""
    reg = _registry(settings, ds)
    va, vb = reg.get(a), reg.get(b)
    out = []
    for split in dict.fromkeys([s for s, _ in va.splits] + [s for s, _ in vb.splits]):
        ids = []
        for v in (va, vb):
            p = _inside(v, Path("data") / f"{split}.parquet")
            ids.append(set(pq.read_table(p, columns=["id"])["id"].to_pylist()) if p.exists() else set())
        out.append(SplitDiff(split, tuple(sorted(ids[1] - ids[0])), tuple(sorted(ids[0] - ids[1]))))
    return out


def pull(ref: str, fmt: str, out: str | Path, *, force: bool = False, settings: Settings | None = None,
         ds: DatasetSettings | None = None) -> list[Path]:
    """Write version `ref` in `fmt` under `out` (plus its manifest.json and README.md); returns the files written.

    Refuses a non-empty `out` unless `force` (then files of the same names are replaced, others left alone). Every
    file is written first to a temporary directory next to `out` and moved in by a name this function chose, so
    nothing is written outside `out`."""
    info = _registry(settings, ds).get(ref)
    if fmt not in FORMATS[info.kind]:
        raise exports.ExportError(f"format {fmt!r} does not fit a {info.kind} dataset; its formats are "
                                  f"{', '.join(FORMATS[info.kind])}", format=fmt, kind=info.kind)
    if "\x00" in str(out):  # Path() takes it, and every file system call on it raises ValueError
        raise PullError(f"--out {str(out)!r} holds a NUL byte; give a directory name without one", out=str(out))
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise PullError(f"--out {dest} is a file; give a directory", out=str(dest))
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise PullError(f"--out {dest} is not empty; choose an empty directory or pass --force to overwrite "
                        "the files of the same names", out=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest))
    try:
        if fmt in info.exports:  # already in the version: copy its bytes
            written = [Path(p) for p in info.manifest()["files"] if Path(p).parts[0] == _folder(fmt)]  # type: ignore[attr-defined]
            for rel in written:
                source = _inside(info, rel)
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, stage / rel)
        else:
            written = exports.write(fmt, info.kind, {s: pq.read_table(_split(info, s)) for s, _ in info.splits},
                                    stage, info.name)
        for extra in ("manifest.json", "README.md"):
            shutil.copyfile(_inside(info, Path(extra)), stage / extra)
            written.append(Path(extra))
        root = dest.resolve()
        for rel in written:  # every target checked before the first is moved in
            target = dest / rel
            if not target.parent.resolve().is_relative_to(root):  # `..` in a name, or a symlink in --out
                raise UnsafePath(f"{target} leads outside --out {dest} (a symlinked directory there, or a name "
                                 "with `..`); remove it or choose another directory", path=str(target))
        for rel in written:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def _folder(fmt: str) -> str:
    return "data" if fmt == "parquet" else fmt
