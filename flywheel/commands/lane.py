"""The landing lane's commands: `flywheel broker`, `send`, `ingest`, `sql` and `schema`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from flywheel.commands.options import log_format_option, metrics_port_option, metrics_served, pass_env
from flywheel.environment import Environment
from flywheel.errors import FlywheelError


@click.group()
def broker() -> None:
    """Run the embedded Kafka broker (Tansu, in memory: data is lost when it stops).

    Point FLYWHEEL_KAFKA_BOOTSTRAP at a real cluster to use that instead.

    \b
    Example:
      flywheel broker start && flywheel ingest --until-idle 5
      flywheel broker status
      flywheel broker stop
    """


@broker.command("start")
@pass_env
def broker_start(env: Environment) -> None:
    """Start the embedded broker on 127.0.0.1:$FLYWHEEL_BROKER_PORT and create the topics.

    Does nothing (but say so) when a broker already answers there.

    \b
    Example:
      FLYWHEEL_BROKER_PORT=19092 flywheel broker start
    """
    from flywheel.infra import broker as b
    from flywheel.streams.topics import ensure_topics

    s = env.core
    st, started = b.start(s)
    if started:
        click.echo(f"started the embedded broker on {st.address} (pid {st.pid}, log {st.log}, storage "
                   f"{s.broker_storage})")
    else:
        click.echo(f"a broker is already running on {st.address}" + (f" (pid {st.pid})" if st.pid else ""))
    created = ensure_topics(s)
    if created:
        click.echo(f"created topics {', '.join(created)} with {s.partitions} partitions")


@broker.command("stop")
@pass_env
def broker_stop(env: Environment) -> None:
    """Stop the embedded broker started by `flywheel broker start`.

    \b
    Example:
      flywheel broker stop
    """
    from flywheel.infra import broker as b

    s = env.core
    click.echo("stopped the embedded broker" if b.stop(s) else f"no embedded broker was running under {s.home}")


@broker.command("status")
@pass_env
def broker_status(env: Environment) -> None:
    """Say whether a broker answers on the embedded broker's port. Exit code 1 when none does.

    \b
    Example:
      flywheel broker status || flywheel broker start
    """
    from flywheel.infra import broker as b

    st = b.status(env.core)
    state = "running" if st.reachable else "not running"
    click.echo(f"broker on {st.address}: {state}" + (f" (embedded, pid {st.pid}, log {st.log})" if st.pid else ""))
    sys.exit(0 if st.reachable else 1)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--skip-invalid", is_flag=True, help="Do not send lines that break the contract.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_env
def send(env: Environment, file: Path, rate: float | None, skip_invalid: bool, no_progress: bool) -> None:
    """Produce the events of a JSONL FILE (one inference or feedback event per line).

    Lines are told apart by a `type` key or by their fields. Invalid lines are reported and still sent, so the
    worker quarantines them with their reason, unless --skip-invalid.

    \b
    Example:
      flywheel send events.jsonl --rate 500
    """
    from flywheel.streams.client import FlywheelClient
    from flywheel.streams.send import count_lines, send_file
    from flywheel.streams.topics import ensure_topics

    s = env.core
    ensure_topics(s)
    total = count_lines(file)
    with FlywheelClient(s, validate=False) as client:
        with click.progressbar(length=total, label=f"sending {file.name}", file=sys.stderr,
                               hidden=no_progress or not sys.stderr.isatty()) as bar:
            report = send_file(client, file, rate=rate, skip_invalid=skip_invalid, progress=bar.update)
    click.echo(f"sent {report.total} events ({report.sent['inference']} inference, {report.sent['feedback']} "
               f"feedback) to {s.kafka_bootstrap}")
    if report.invalid:
        verb = "skipped" if skip_invalid else "sent anyway, they will be quarantined"
        click.echo(f"{len(report.invalid)} lines break the contract ({verb}):", err=True)
        for n, reason in report.invalid[:5]:
            click.echo(f"  line {n}: {reason}", err=True)


@click.command()
@click.option("--until-idle", type=float, default=None, metavar="SECONDS",
              help="Exit after SECONDS without a new event (default: run until stopped).")
@metrics_port_option
@log_format_option
@pass_env
def ingest(env: Environment, until_idle: float | None, metrics_port: int | None) -> None:
    """Land events from Kafka in the lake, exactly once, quarantining invalid ones.

    Start several to share the partitions (same FLYWHEEL_INGEST_GROUP). Stop with Ctrl-C or SIGTERM: the worker
    lands what it holds first. A killed worker resumes exactly where the lake is. With --until-idle it exits 0
    only once every partition is landed up to the broker's end; if some stay unowned or behind for
    FLYWHEEL_DRAIN_TIMEOUT_S it exits 1 naming them and their lag. With --metrics-port it serves Prometheus
    metrics (events consumed, landed, quarantined, replays dropped, lag per partition, batch sizes, commit
    latency).

    \b
    Example:
      flywheel ingest                 # run as a service
      flywheel ingest --until-idle 5  # drain the topics, then exit
      flywheel ingest --metrics-port 9464 --log-format json
    """
    from flywheel.streams.ingest import IngestStats, IngestWorker
    from flywheel.streams.metrics import IngestMetrics

    s = env.core
    last = [0.0]

    def report(st: IngestStats) -> None:
        now = time.monotonic()
        if now - last[0] >= 2:
            last[0] = now
            rate = st.consumed / max(now - st.started, 1e-9)
            click.echo(f"consumed {st.consumed}  inferences {st.landed['inferences']}  feedback "
                       f"{st.landed['feedback']}  quarantined {st.quarantined}  ({rate:,.0f} events/s)", err=True)

    metrics = IngestMetrics()
    worker = IngestWorker(s, on_flush=report, metrics=metrics)
    click.echo(f"landing {s.inference_topic}, {s.feedback_topic} from {s.kafka_bootstrap} into {s.lake}", err=True)
    with metrics_served(env, metrics_port, metrics.registry, "landing"):
        st = worker.run(until_idle=until_idle, install_signal_handlers=True)
    click.echo(f"landed {st.landed['inferences']} inferences, {st.landed['feedback']} feedback, quarantined "
               f"{st.quarantined} (of {st.consumed} consumed; {st.replayed} replays dropped, "
               f"{st.dead_letter_failures} dead-letter deliveries failed, {st.gaps_reread} re-reads of skipped "
               f"offsets)")


@click.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--limit", type=int, default=None, help="Show at most this many rows (table format).")
@pass_env
def sql(env: Environment, query: str, fmt: str, limit: int | None) -> None:
    """Run a SQL QUERY (DuckDB) over the lake's views.

    Views: inferences, feedback, interactions, quarantine (deduplicated), and lake_inferences, lake_feedback,
    lake_quarantine (raw, one row per landed message).

    A local operator tool: QUERY is any DuckDB SQL, run with your own rights on this host (it can read and write
    any file you can, e.g. with COPY or read_text). Never pass it text from users or expose it over a network;
    no flywheel server (the collector, `flywheel serve`) runs SQL it is sent.

    \b
    Example:
      flywheel sql "SELECT model, avg(thumbs_up - thumbs_down) FROM interactions GROUP BY model"
      flywheel sql "SELECT reason, count(*) FROM quarantine GROUP BY reason" --format csv
    """
    import duckdb

    from flywheel.warehouse.query import connect

    con = connect(env.core, orphan_horizon_hours=env.quality.orphan_horizon_hours)
    try:
        rel = con.sql(query)
    except duckdb.Error as exc:
        raise FlywheelError(f"query failed: {exc}") from None
    if rel is None:
        return
    if fmt == "table":
        rel.show(max_rows=limit or 40, max_width=200)
    elif fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(rel.columns)
        for row in rel.fetchall():
            w.writerow(row)
    else:
        cols = rel.columns
        for row in rel.fetchall():
            click.echo(json.dumps(dict(zip(cols, row)), default=str, ensure_ascii=False))


@click.command()
@click.option("--format", "fmt", type=click.Choice(["markdown", "json-schema"]), default="markdown",
              show_default=True)
def schema(fmt: str) -> None:
    """Print the event contract: the reference doc, or JSON Schema for other producers.

    \b
    Example:
      flywheel schema --format json-schema > flywheel-events.schema.json
    """
    from flywheel.schemas import docs

    click.echo(docs.markdown() if fmt == "markdown" else json.dumps(docs.json_schema(), indent=2))


COMMANDS = [broker, send, ingest, sql, schema]
