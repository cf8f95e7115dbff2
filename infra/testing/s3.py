"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for tests, the bench and the demo: a lake on object
storage, or the embedded broker's s3:// storage engine, without any cloud account.

moto keeps objects in memory and honours `If-None-Match: *` on PutObject, which is what makes Delta commits safe
from several writers (see `flywheel.storage`): tests of that run against it as they would against AWS S3 or MinIO.

It runs as a process of its own, as a store would: delta-rs holds the GIL through some calls that do I/O
(`DeltaTable.is_deltatable` waits for its list request with it), so a moto server on a thread of the same process
cannot answer them, and the call times out after three minutes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3  # type: ignore[import-untyped]

from flywheel.config import Settings

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
"""What moto accepts (any keys do); a lake reads them from the environment, as it would real ones."""
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    url: str
    """`http://127.0.0.1:PORT` of the running server."""

    def bucket(self, name: str = "") -> str:
        """Create a bucket (a fresh name by default) and return its name."""
        name = name or f"lake-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=CREDENTIALS[
            "AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).create_bucket(
            Bucket=name)
        return name

    def lake(self, settings: Settings, prefix: str = "lake") -> Settings:
        """`settings` with the lake at `s3://<a new bucket>/<prefix>` on this server."""
        return settings.replace(lake=f"s3://{self.bucket()}/{prefix}", lake_s3_endpoint=self.url,
                                lake_s3_region=REGION, lake_s3_allow_http=True)

    def lake_environment(self, settings: Settings) -> dict[str, str]:
        """The variables a `flywheel` subprocess needs to open `settings`' s3:// lake on this server."""
        return {**CREDENTIALS, "FLYWHEEL_LAKE": settings.lake, "FLYWHEEL_LAKE_S3_ENDPOINT": self.url,
                "FLYWHEEL_LAKE_S3_REGION": REGION, "FLYWHEEL_LAKE_S3_ALLOW_HTTP": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_s3() -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, in a process of its own, until the block ends."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start on {url} (exit code {proc.poll()})") from None
                time.sleep(0.1)
        yield S3Server(url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
