"""`flywheel collect`: the HTTP and OpenTelemetry collector, for applications that do not speak Kafka."""

from __future__ import annotations

import dataclasses

import click

from flywheel.commands.options import log_format_option, pass_env, settings_help
from flywheel.environment import Environment
from flywheel.streams.collector.settings import PREFIX, CollectorSettings


@click.command(epilog="Settings:\n\n\b\n" + settings_help(CollectorSettings, PREFIX, 38))
@click.option("--host", default=None, help="Address to listen on (default: FLYWHEEL_COLLECTOR_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: FLYWHEEL_COLLECTOR_PORT, 4318).")
@log_format_option
@pass_env
def collect(env: Environment, host: str | None, port: int | None) -> None:
    """Serve POST /v1/inference, /v1/feedback (JSON or NDJSON) and /v1/traces (OTLP/HTTP GenAI spans).

    Every event is checked against the contract and answered only once the broker acknowledged it (202 with the
    ids); bad lines get 400 with every field error, a missing key 401, an unreachable broker 503 with
    Retry-After. /healthz, /readyz, /openapi.json and /metrics (Prometheus) need no key. Stops on Ctrl-C after
    answering what is in flight.

    \b
    Example:
      FLYWHEEL_COLLECTOR_API_KEYS=change-me flywheel collect --port 4318
      curl -H 'Authorization: Bearer change-me' -H 'Content-Type: application/x-ndjson' \\
           --data-binary @events.jsonl http://127.0.0.1:4318/v1/inference
    """
    import uvicorn

    from flywheel.streams.collector.app import create_app

    settings = dataclasses.replace(env.collector, host=host or env.collector.host, port=port or env.collector.port)
    app = create_app(env.core, settings)
    click.echo(f"collecting on http://{settings.host}:{settings.port} into {env.core.kafka_bootstrap} "
               f"(topics {env.core.inference_topic}, {env.core.feedback_topic})", err=True)
    # log_config=None: uvicorn's own records go through flywheel's handler (and its JSON format when asked).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                lifespan="on", log_config=None)


COMMANDS = [collect]
