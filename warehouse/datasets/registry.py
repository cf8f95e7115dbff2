"""The dataset registry: versions that never change, published atomically.

Layout under the registry root (`DatasetSettings.root_path`, default `<lake>/datasets`):

    <name>/v<N>/data/<split>.parquet, <format>/..., manifest.json, README.md    one published version
    <name>/v<N>.tmp-<id>/                                                      a version being written
    _registry/                                                                 Delta table: one row per version

A version is written under a temporary name, fsynced, renamed to `v<N>` (atomic on one file system), and then
registered by one Delta commit to `_registry`. The registry is what readers trust: a `v<N>` directory that is not
registered (a run killed between the rename and the commit) is invisible, and the next run of that dataset
removes it, with any temporary directory, before it writes. Runs of one dataset are serialized by a file lock.

On object storage (the lake at `s3://...` and no FLYWHEEL_DATASETS_ROOT) the registry table and the versions live
under `<lake>/datasets` there, and `root` is this host's copy: a version is written and renamed into place locally
as above, then uploaded, and registered on the store last, which is still the moment it becomes visible. A reader
downloads a version it does not have yet (`get`, `latest`) next to the others under a temporary name, checks every
file against the sha256 its manifest lists, and renames it into place; a version never changes, so the copy never
goes stale. Runs of one dataset are serialized on one host only: curate a dataset from one host at a time.

Why a Delta table rather than a JSON index: appends from several datasets' runs commit atomically without a
rewrite of the whole index, and old states stay readable (time travel). It sits under the registry root, not
directly under the lake, so lake maintenance (which vacuums the lake's top-level tables) never touches it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.storage import LakeLocation
from flywheel.warehouse.datasets.recipes import RecipeError, check_name
from flywheel.warehouse.datasets.settings import DatasetSettings

REGISTRY = "_registry"
REGISTRY_SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False),
    pa.field("version", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("recipe_sha256", pa.string(), nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("splits", pa.string(), nullable=False),  # JSON object: split -> rows
    pa.field("exports", pa.string(), nullable=False),  # JSON list of formats
    pa.field("reason", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
])
_REF = re.compile(r"^(?P<name>[^@]+)(?:@v?(?P<version>[^@]*))?$")


class DatasetNotFound(FlywheelError):
    """No such dataset, or no such version of it; `name` and `version` say which."""

    def __init__(self, message: str, *, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        super().__init__(message)


class RegistryError(FlywheelError):
    """Writing the registry failed (e.g. a busy file system); `path` names where. Retryable: nothing became
    visible, and the next run removes what was written and writes the same version again."""

    retryable = True

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as the registry lists it."""

    name: str
    version: int
    kind: str
    created_at: datetime
    content_hash: str
    recipe_sha256: str
    rows: int
    splits: tuple[tuple[str, int], ...]
    exports: tuple[str, ...]
    reason: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def manifest(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        return data


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name`, `name@3` or `name@v3` -> (name, version or None for the latest)."""
    m = _REF.match(ref.strip())
    if not m:
        raise RecipeError(f"{ref!r} is not a dataset reference; write NAME or NAME@VERSION", key="dataset")
    name = check_name(m.group("name"), key="dataset")
    raw = m.group("version")
    if raw is None:
        return name, None
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) < 1:  # isdigit() takes "²", which int() refuses
        raise RecipeError(f"version {raw!r} of {name} is not a positive whole number; write {name}@3",
                          key="dataset")
    return name, int(raw)


class Registry:
    def __init__(self, core: Settings, ds: DatasetSettings) -> None:
        self.root = ds.root_path(core)
        self.remote: LakeLocation | None = ds.remote_root(core)

    @property
    def table_path(self) -> Path:
        return self.root / REGISTRY

    @property
    def table_uri(self) -> str:
        """Where the registry table is, as delta-rs opens it (on the store when the registry is remote)."""
        return self.remote.join(REGISTRY) if self.remote else str(self.table_path)

    @property
    def _options(self) -> dict[str, str] | None:
        return self.remote.storage_options if self.remote else None

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """Published versions (of `name`, or of every dataset), by name then version. On object storage their
        files are on this host only once `get` or `latest` fetched them."""
        if not DeltaTable.is_deltatable(self.table_uri, self._options):
            return []
        con = duckdb.connect()
        try:
            con.register("reg", DeltaTable(self.table_uri, storage_options=self._options).to_pyarrow_dataset())
            rows = con.execute("SELECT * FROM reg WHERE $n IS NULL OR name = $n ORDER BY name, version",
                               {"n": name}).fetchall()
        finally:
            con.close()
        out = []
        for r in rows:
            rec = dict(zip(REGISTRY_SCHEMA.names, r, strict=True))
            out.append(VersionInfo(
                name=rec["name"], version=int(rec["version"]), kind=rec["kind"],
                created_at=rec["created_at"].astimezone(UTC), content_hash=rec["content_hash"],
                recipe_sha256=rec["recipe_sha256"], rows=int(rec["rows"]),
                splits=tuple((k, int(v)) for k, v in json.loads(rec["splits"]).items()),
                exports=tuple(json.loads(rec["exports"])), reason=rec["reason"],
                path=self.root / rec["name"] / f"v{int(rec['version'])}"))
        return out

    def latest(self, name: str) -> VersionInfo | None:
        found = self.versions(name)
        return self.fetch(found[-1]) if found else None

    def fetch(self, info: VersionInfo) -> VersionInfo:
        """`info`, its files on this host: on object storage a version not copied yet is downloaded under a
        temporary name, checked against its manifest's sha256s and renamed into place. Local: `info` as it is."""
        if self.remote is None or info.path.is_dir():
            return info
        fs, base = self.remote.filesystem()
        source = f"{base}/{info.name}/v{info.version}"
        tmp = info.path.with_name(f"{info.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(source, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            listed = json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))["files"]
            bad = [rel for rel, f in listed.items() if sha256_file(tmp / rel) != f["sha256"]]
            if bad:
                raise RegistryError(f"{info.ref} at {self.remote.join(info.name, f'v{info.version}')}: {bad} do not "
                                    "match the sha256 its manifest lists; restore the version or curate a new one",
                                    path=self.remote.join(info.name, f"v{info.version}"))
            try:
                os.rename(tmp, info.path)
            except OSError:  # another reader on this host put the same (immutable) version in place first
                if not info.path.is_dir():
                    raise
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise RegistryError(f"fetching {info.ref} from {self.remote.join(info.name)} failed: {exc}",
                                path=self.remote.join(info.name, f"v{info.version}")) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info

    def get(self, ref: str) -> VersionInfo:
        """The version `ref` names (`name@3`, or `name` for the latest); `DatasetNotFound` when there is none."""
        name, version = parse_ref(ref)
        found = self.versions(name)
        if not found:
            known = sorted({v.name for v in self.versions()})
            raise DatasetNotFound(f"no dataset named {name!r} in {self.root}"
                                  + (f"; the datasets are {', '.join(known)}" if known else
                                     "; run `flywheel curate` first"), name=name)
        if version is None:
            return self.fetch(found[-1])
        for v in found:
            if v.version == version:
                return self.fetch(v)
        raise DatasetNotFound(f"{name} has no version {version}; its versions are "
                              f"{', '.join(str(v.version) for v in found)}", name=name, version=version)

    @contextmanager
    def writing(self, name: str) -> Iterator[Draft]:
        """Serialize runs of `name`, clear what a killed run left, and hand out a draft of the next version."""
        check_name(name)
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            published = {v.version for v in self.versions(name)}
            for p in base.iterdir():
                m = re.match(r"^v(\d+)(\.tmp-.*)?$", p.name)
                if m and (m.group(2) or int(m.group(1)) not in published):
                    shutil.rmtree(p)  # left by a killed run: never registered, so never visible
            if self.remote is not None:  # and what a killed run uploaded but did not register
                fs, remote = self.remote.filesystem()
                for child in LakeLocation(self.remote.join(name), self.remote.options).children():
                    m = re.match(r"^v(\d+)$", child)
                    if m and int(m.group(1)) not in published:
                        fs.delete_dir(f"{remote}/{name}/{child}")
            draft = Draft(self, name, max(published, default=0) + 1)
            try:
                yield draft
            finally:
                if draft.tmp.exists():
                    shutil.rmtree(draft.tmp)

    def register(self, info: VersionInfo) -> None:
        row = {"name": info.name, "version": info.version, "kind": info.kind, "created_at": info.created_at,
               "content_hash": info.content_hash, "recipe_sha256": info.recipe_sha256, "rows": info.rows,
               "splits": json.dumps(dict(info.splits)), "exports": json.dumps(list(info.exports)),
               "reason": info.reason, "path": str(info.path.relative_to(self.root))}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                write_deltalake(self.table_uri, pa.Table.from_pylist([row], REGISTRY_SCHEMA), mode="append",
                                storage_options=self._options)
            except Exception as exc:  # delta-rs raises several types; the message names the path
                raise RegistryError(f"registering {info.ref} in {self.table_uri} failed: {exc}",
                                    path=self.table_uri) from exc


class Draft:
    """The next version of one dataset, written under a temporary directory until `publish`."""

    def __init__(self, registry: Registry, name: str, version: int) -> None:
        self.registry = registry
        self.name = name
        self.version = version
        self.tmp = registry.root / name / f"v{version}.tmp-{uuid.uuid4().hex[:8]}"
        self.final = registry.root / name / f"v{version}"

    def publish(self, info: VersionInfo) -> None:
        """fsync every file, rename the directory into place, then register it (the moment it becomes visible)."""
        for path in sorted(self.tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        os.rename(self.tmp, self.final)
        fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        remote = self.registry.remote
        if remote is not None:  # uploaded whole before it is registered: a reader never sees part of it
            fs, base = remote.filesystem()
            try:
                pafs.copy_files(str(self.final), f"{base}/{self.name}/v{self.version}",
                                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            except OSError as exc:
                raise RegistryError(f"uploading {info.ref} to {remote.join(self.name)} failed: {exc}",
                                    path=remote.join(self.name, f"v{self.version}")) from exc
        self.registry.register(info)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> datetime:
    return datetime.now(UTC)

