"""Soak: the lane at a steady rate for a long while, with every long-running process's memory and the latency from
event to queryable watched throughout (see flywheel.infra.testing.soak).

    python bench/soak.py [--minutes 30] [--rate 5000] [--collector-share 0.2] [--broker embedded|kafka]

Starts the embedded broker (or uses FLYWHEEL_KAFKA_BOOTSTRAP; `--broker kafka`: a single-node Apache Kafka from
flywheel.infra.kafka, to tell the lane's behaviour from the embedded broker's) and, in processes of their own,
`flywheel ingest`,
`flywheel collect` and `flywheel signals` over a fresh lake; offers the events, prints a line per sample, then a
table per window: events sent, latency p50/p99, each process's largest RSS. The baseline of a soak is its own first
window: memory that keeps growing, or a p99 that keeps rising, from the first window to the last is what it is for.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.infra import broker
from flywheel.infra.kafka import KAFKA_VERSION, kafka
from flywheel.infra.testing.soak import SoakPlan, run, statistics_line
from flywheel.streams.topics import ensure_topics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=5_000, help="events per second offered")
    ap.add_argument("--collector-share", type=float, default=0.2, help="share of the events posted to the collector")
    ap.add_argument("--linger-ms", type=int, default=20,
                    help="linger of the soak's producer (the apps straight to Kafka); the collector's is "
                         "FLYWHEEL_COLLECTOR_LINGER_MS")
    ap.add_argument("--keep", action="store_true", help="keep the soak's FLYWHEEL_HOME (lake, soak-*.log)")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between memory samples")
    ap.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                    help="embedded: Tansu (or FLYWHEEL_KAFKA_BOOTSTRAP when set); kafka: a single-node Apache Kafka "
                         "started for the soak (needs Java and, once, Maven: see flywheel.infra.kafka)")
    ap.add_argument("--kafka-version", default=KAFKA_VERSION)
    ap.add_argument("--kafka-libs", type=Path, default=None, help="a Kafka distribution's libs/ (default: Maven)")
    ap.add_argument("--kafka-heap-mb", type=int, default=1024, help="the Apache Kafka JVM's heap")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-soak-"))
    tag = uuid.uuid4().hex[:6]
    s = Settings.from_env().replace(home=home, topic_prefix=f"soak{tag}", ingest_group=f"soak-{tag}", partitions=3)
    started = False
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, home, ignore_errors=True)
        broker_pid = None
        if args.broker == "kafka":
            k = stack.enter_context(kafka(args.kafka_version, libs=args.kafka_libs, heap_mb=args.kafka_heap_mb,
                                          keep=args.keep))
            print(f"soak: Apache Kafka {k.version} on {k.bootstrap} (pid {k.pid}, {k.directory})", flush=True)
            s, broker_pid = s.replace(kafka_bootstrap=k.bootstrap), k.pid
        elif s.uses_embedded_broker:
            s = s.replace(broker_port=broker.free_port())
            _, started = broker.start(s)
            broker_pid = broker.status(s).pid
        try:
            ensure_topics(s)
            report = run(s, SoakPlan(rate=args.rate, seconds=args.minutes * 60, collector_share=args.collector_share,
                                     sample_s=args.sample, linger_ms=args.linger_ms), progress=True,
                         broker_pid=broker_pid)
            print(f"broker: {args.broker}" + (f" (Apache Kafka {args.kafka_version})" if args.broker == "kafka"
                                              else f" ({s.kafka_bootstrap})"))
            print("\n".join(report.lines()))
            print(statistics_line(report))
            print(f"exit codes: {report.exit_codes}")
        finally:
            if started:
                broker.stop(s)
            if args.keep:
                print(f"kept {home}")


if __name__ == "__main__":
    try:
        main()
    except FlywheelError as exc:  # e.g. Apache Kafka cannot run here: the message says what to install or pass
        sys.exit(f"Error: {exc}")
