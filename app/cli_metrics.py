"""`tidings metrics serve`: the workers' Prometheus samples and the status gauges over HTTP."""

from __future__ import annotations

import contextlib
import threading

import click

from tidings.app.cli_common import domain_option, load


@click.group("metrics")
def metrics() -> None:
    """Prometheus metrics (see README "Watching a running system")."""


@metrics.command("serve")
@domain_option
@click.option(
    "--port", type=click.IntRange(1, 65535), default=9108, show_default=True, help="port to serve /metrics on"
)
@click.option("--addr", default="0.0.0.0", show_default=True, help="address to listen on")
def serve(domain_path: str | None, port: int, addr: str) -> None:
    """Serve /metrics: what the workers recorded in PROMETHEUS_MULTIPROC_DIR (the folder they
    were started with) and the outbox, audit and per-handler lag, read at each scrape."""
    from tidings.app import metrics as prometheus

    domain, celery = load(domain_path)
    prometheus.serve(port, domain, celery, addr=addr)
    click.echo(f"serving http://{addr}:{port}/metrics (samples in {prometheus.multiprocess_dir()})")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
