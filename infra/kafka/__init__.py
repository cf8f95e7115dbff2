"""A real Apache Kafka broker (KRaft, one node) for benchmarks and tests, beside the embedded Tansu broker.

The embedded broker has gaps of its own (see ../shared/STACK-NOTES.md: among them, every fetch lists every batch a
partition holds), so a figure measured only on it cannot say whether flywheel or the broker is to blame. This starts
Apache Kafka itself, from Maven Central's jars, on a free 127.0.0.1 port:

    with kafka() as k:                # Settings(kafka_bootstrap=k.bootstrap) points flywheel at it
        ...
    python -m flywheel.infra.kafka    # one in the foreground, until Ctrl-C

What it needs: Java 17+ (`java`) and, once, Maven (`mvn`) reaching Maven Central or a mirror of it: the jars named
by `pom.xml` beside this file are copied into a cache directory (`cache_dir`) the first time and reused after. A
machine without Maven Central can use the `libs/` of a Kafka distribution instead (`libs=`, `--libs`).

Guarantees: the broker runs in a process group of its own and the whole group is stopped when the context exits
(and at interpreter exit, should the context never exit); its storage is a fresh temporary directory each time,
removed afterwards unless `keep`. It is a development broker: one node, replication factor 1, no security.
"""

from __future__ import annotations

import atexit
import base64
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import BrokerUnavailable, FlywheelError
from flywheel.infra.broker import HOST, free_port, log_tail, reachable

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release started by default (`pom.xml`'s default too)."""
POM = Path(__file__).with_name("pom.xml")
_STAMP = ".complete"
"""Written into a cache directory once every jar is in it: a copy that was interrupted is made again."""


class KafkaUnavailable(FlywheelError):
    """Apache Kafka cannot be run on this machine: no Java, no Maven, or its jars cannot be resolved. Terminal
    here; the message names what to install or pass instead."""


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str
    """`127.0.0.1:PORT`: FLYWHEEL_KAFKA_BOOTSTRAP for flywheel's processes."""
    pid: int
    """The JVM's pid, also its process group's id."""
    directory: Path
    """Its configuration, storage (`data/`) and log (`kafka.log`)."""
    version: str

    @property
    def log(self) -> Path:
        return self.directory / "kafka.log"


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of `version` are kept once resolved, by default: `~/.cache/flywheel/kafka-<version>`, shared
    by every FLYWHEEL_HOME (the jars are the same for all; `cache=` elsewhere)."""
    return Path.home() / ".cache" / "flywheel" / f"kafka-{version}"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaUnavailable("Apache Kafka needs Java 17 or newer and `java` is not on PATH: install it "
                               "(Debian: apt-get install openjdk-17-jre-headless)")
    return java


def jars(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    """The directory of `version`'s jars, resolved with Maven into `cache` (default `cache_dir`) the first time."""
    target = cache or cache_dir(version)
    if (target / _STAMP).exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(f"Apache Kafka's jars are not in {target} yet and Maven (`mvn`), which resolves them "
                               "once, is not on PATH: install it (Debian: apt-get install maven), or pass the libs/ "
                               f"directory of a Kafka {version} distribution (--libs)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=target.parent))
    try:
        # -U: Maven otherwise remembers a failed download (a machine that was offline) and will not try again
        done = subprocess.run([mvn, "-q", "-B", "-U", "-Dstyle.color=never", "-f", str(POM),
                               "dependency:copy-dependencies", f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
                               f"-Dkafka.version={version}"], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            lines = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr).strip().splitlines()
            # Maven's first [ERROR] line says what failed, at its end (an unknown host, a missing artifact); the
            # lines after it are generic help
            tail = next((ln for ln in lines if ln.startswith("[ERROR] ") and ln[8:].strip()),
                        lines[-1] if lines else "")
            tail = tail if len(tail) < 400 else "[ERROR] ..." + tail[-350:]
            raise KafkaUnavailable(
                f"Maven could not resolve Apache Kafka {version} (org.apache.kafka:kafka_2.13:{version}, {POM}): "
                f"{tail}. It needs Maven Central or a mirror of it (~/.m2/settings.xml); or pass the libs/ directory "
                f"of a Kafka {version} distribution (--libs)", version=version)
        (partial / _STAMP).write_text(version)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _cluster_id() -> str:
    # Kafka's Uuid: 16 random bytes in URL-safe base64 without padding; like Uuid.randomUuid, none starting with
    # "-", which a command line would take for an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def server_properties(port: int, controller_port: int, data: Path) -> str:
    """A single-node KRaft broker and controller on 127.0.0.1 (the keys of Kafka's config/kraft/server.properties
    for a dynamic quorum, which `StorageTool format --standalone` bootstraps)."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers={HOST}:{controller_port}",
        f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        # one node: every internal topic with one replica, or it is never created
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        # flywheel creates its topics itself (ensure_topics); a typo should not make one
        "auto.create.topics.enable=false",
        "",
    ])


_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
"""


def _classpath(libs: Path) -> str:
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaUnavailable(f"{libs} holds no kafka_2.13-*.jar: pass the libs/ directory of a Kafka distribution "
                               "(or leave --libs out to resolve the jars with Maven)", path=str(libs))
    return str(libs / "*")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the broker's whole process group (a clean shutdown), SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _ready(bootstrap: str, timeout: float) -> bool:
    """Whether the broker answers a metadata request with itself among the brokers."""
    from confluent_kafka.admin import AdminClient  # a dependency of flywheel's; imported only here

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except Exception:  # KafkaException while the broker is still starting
        return False


@contextmanager
def kafka(version: str = KAFKA_VERSION, *, libs: Path | None = None, cache: Path | None = None,
          port: int | None = None, heap_mb: int = 512, timeout: float = 120.0, keep: bool = False,
          log_level: str = "WARN") -> Iterator[KafkaBroker]:
    """A running single-node Apache Kafka `version` for the `with` block (see the module docstring).

    `libs`: a directory of its jars (default: resolved with Maven once into `cache`, see `jars`); `port`: its
    client port (default a free one); `heap_mb`: the JVM's heap (-Xmx and -Xms). Raises `KafkaUnavailable` when it
    cannot run here and `BrokerUnavailable` when it did not answer within `timeout` seconds."""
    java = _java()
    classpath = _classpath(libs or jars(version, cache))
    port = port or free_port()
    controller_port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="flywheel-kafka-"))
    bootstrap = f"{HOST}:{port}"
    props, log4j = directory / "server.properties", directory / "log4j2.properties"
    props.write_text(server_properties(port, controller_port, directory / "data"))
    log4j.write_text(_LOG4J2.format(level=log_level))
    jvm = [java, f"-Xmx{heap_mb}m", f"-Xms{heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
    log = directory / "kafka.log"
    proc: subprocess.Popen[bytes] | None = None
    stopper = None
    try:
        fmt = subprocess.run(jvm + ["kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(),
                                    "-c", str(props)], capture_output=True, text=True, timeout=120)
        if fmt.returncode != 0:
            raise BrokerUnavailable(f"Kafka's StorageTool could not format {directory / 'data'} (exit "
                                    f"{fmt.returncode}): {(fmt.stdout + fmt.stderr).strip()[-800:]}",
                                    bootstrap=bootstrap)
        with open(log, "ab") as out:
            proc = subprocess.Popen(jvm + ["kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        stopper = functools.partial(_stop, proc)
        atexit.register(stopper)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BrokerUnavailable(f"Apache Kafka exited with code {proc.returncode} while starting; see {log}: "
                                        f"{log_tail(log)}", bootstrap=bootstrap, log=str(log))
            if reachable(HOST, port) and _ready(bootstrap, timeout=2.0):
                break
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"Apache Kafka did not answer on {bootstrap} within {timeout:.0f}s; see "
                                        f"{log}: {log_tail(log)}", bootstrap=bootstrap, log=str(log))
            time.sleep(0.2)
        yield KafkaBroker(bootstrap, proc.pid, directory, version)
    finally:
        if proc is not None:
            _stop(proc)
        if stopper is not None:
            atexit.unregister(stopper)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
