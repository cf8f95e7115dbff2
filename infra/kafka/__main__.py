"""`python -m flywheel.infra.kafka`: a single-node Apache Kafka on 127.0.0.1 in the foreground, until Ctrl-C.

    python -m flywheel.infra.kafka [--version 4.1.1] [--port 9092] [--libs DIR] [--heap-mb 512] [--keep]

Prints the FLYWHEEL_KAFKA_BOOTSTRAP to export in another shell; stops the broker (its whole process group) on
Ctrl-C or SIGTERM. See flywheel.infra.kafka for what it needs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from flywheel.errors import FlywheelError
from flywheel.infra.kafka import KAFKA_VERSION, kafka


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flywheel.infra.kafka", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default=KAFKA_VERSION, help="Apache Kafka release (default %(default)s)")
    ap.add_argument("--port", type=int, default=None, help="client port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--libs", type=Path, default=None,
                    help="a Kafka distribution's libs/ directory (default: Maven resolves the jars once)")
    ap.add_argument("--heap-mb", type=int, default=512, help="the JVM's heap (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep its directory (configuration, data, kafka.log)")
    ap.add_argument("--log-level", default="INFO", help="the broker's log level (default %(default)s)")
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with kafka(args.version, libs=args.libs, port=args.port, heap_mb=args.heap_mb, keep=args.keep,
                   log_level=args.log_level) as k:
            print(f"Apache Kafka {k.version} on {k.bootstrap} (pid {k.pid}, log {k.log})\n"
                  f"  export FLYWHEEL_KAFKA_BOOTSTRAP={k.bootstrap}\nCtrl-C stops it.", flush=True)
            stop.wait()
        if args.keep:
            print(f"kept {k.directory}")
    except FlywheelError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
