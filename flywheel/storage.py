"""Where the lake lives: a local directory or `s3://bucket/prefix` on an S3-compatible store, as one record
(`LakeLocation`) that an edge builds once from `Settings.lake_location` and hands to every reader and writer.

Commits from several hosts: delta-rs 1.6 writes each Delta log entry with a conditional put (`If-None-Match: *`,
object_store's `PutMode::Create`), so of two writers on any hosts that both try to create version N exactly one
succeeds; the other gets a commit conflict, and `Lake.commit` starts that commit again on the new version. The
options here pin that mechanism: delta-rs 1.x no longer has its DynamoDB locking provider
(`AWS_S3_LOCKING_PROVIDER=dynamodb` only logs an error, and then skips the check it replaced), and
`AWS_S3_ALLOW_UNSAFE_RENAME=true` turns the put into check-then-write, which two hosts can race. Both would be read
from the environment by delta-rs; the options below override them. The store must honour `If-None-Match` on
PutObject: AWS S3 (since 2024), MinIO, Cloudflare R2 and moto do.

Credentials are never settings here: delta-rs and pyarrow read the standard AWS chain themselves
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`, an instance or pod role), so no
secret passes through flywheel's records, logs or errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

SAFE_COMMITS = {"aws_conditional_put": "etag", "AWS_S3_ALLOW_UNSAFE_RENAME": "false",
                "AWS_S3_LOCKING_PROVIDER": "none"}
"""Storage options every object-store lake is opened with: commits by conditional put, never by unsafe rename."""


@dataclass(frozen=True)
class LakeLocation:
    """A lake root: `uri` is a local path or `s3://bucket/prefix` (no trailing slash); `options` are the delta-rs
    storage options for it (empty for a local lake). Holds no secret."""

    uri: str
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> str:
        """The URI (or local path) of `parts` under the root."""
        return "/".join((self.uri.rstrip("/"), *parts))

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What delta-rs takes as `storage_options` (None for a local lake, as delta-rs was called before)."""
        return dict(self.options) if self.remote else None

    @cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if not self.remote:
            return pafs.LocalFileSystem(), self.uri
        endpoint = self.options.get("AWS_ENDPOINT_URL", "")
        parts = urlsplit(endpoint) if endpoint else None
        fs = pafs.S3FileSystem(region=self.options.get("AWS_REGION") or None,
                               endpoint_override=parts.netloc if parts else None,
                               scheme=parts.scheme if parts else "https")
        return fs, self.uri.removeprefix("s3://").rstrip("/")

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem for the lake's plain files (dataset versions, reports) and the root's path in it."""
        return self._fs

    def children(self) -> list[str]:
        """Names of the directories (prefixes) directly under the root; [] when it does not exist yet."""
        if not self.remote:
            root = Path(self.uri)
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        fs, base = self._fs
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (FileNotFoundError, OSError):
            return []
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def s3_options(endpoint: str, region: str, allow_http: bool) -> dict[str, str]:
    """The storage options of an `s3://` lake from its settings (anything left empty comes from the AWS chain)."""
    options = dict(SAFE_COMMITS)
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
    if region:
        options["AWS_REGION"] = region
    if allow_http:
        options["AWS_ALLOW_HTTP"] = "true"
    return options
