"""`python main.py dashboard`: write the browser dashboard now (trading commands write it after every run), or a
backtest's tearsheet or a study's page again; with --serve, show it on 127.0.0.1 with the standard library's HTTP
server for a quick look (the page is a plain file: any browser opens it without a server too)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from cli.app import cli, done, start
from common.errors import ConfigError

log = logging.getLogger(__name__)


@cli.command(name="dashboard")
@click.option("--serve", "port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Then serve the page on http://127.0.0.1:PORT until Ctrl-C (0: any free port).")
@click.option("--backtest", "backtest_dir", type=click.Path(file_okay=False, exists=True),
              help="Write the tearsheet of the backtest in this --out folder (DIR/dashboard/index.html) instead.")
@click.option("--study", "study_dir", type=click.Path(file_okay=False, exists=True),
              help="Write the page of the research study in this --out folder (DIR/dashboard/index.html) instead.")
@click.pass_context
def dashboard_command(ctx: click.Context, port: int | None, backtest_dir: str | None, study_dir: str | None) -> None:
    """Write the dashboard (DASHBOARD_DIR, default dashboard/index.html beside the journal): Now, Performance and
    Runs, from the journal, with the account from the broker when it answers."""
    from flows import dashboard

    config = ctx.find_root().obj.config
    if not dashboard.enabled(config):
        raise ConfigError("DASHBOARD_DIR is off: set it to a folder, or leave it empty for dashboard/ beside the "
                          "journal")
    if backtest_dir and study_dir:
        raise ConfigError("--backtest and --study: give one of them")
    if backtest_dir or study_dir:
        folder = Path(backtest_dir or study_dir)
        wanted = "trades.db" if backtest_dir else "research.db"
        if not (folder / wanted).exists():
            raise ConfigError(f"{'--backtest' if backtest_dir else '--study'}: {folder} holds no {wanted}")
        path = (dashboard.write_tearsheet(folder, config) if backtest_dir
                else dashboard.write_study_page(folder, config))
        click.echo(f"wrote {path}")
    else:
        rt = start(ctx)
        path = dashboard.write_dashboard(rt, account=dashboard.current_account(rt))
        click.echo(f"wrote {path}")
        done(rt)
    if port is not None:
        serve(path.parent, port)


def serve(folder: Path, port: int) -> None:
    """Serve `folder` on the loopback interface only, until Ctrl-C."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the standard library's signature
            log.info("dashboard server: " + format, *args)

    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                 functools.partial(Handler, directory=str(folder)))
    except OSError as err:
        raise ConfigError(f"--serve {port}: cannot listen on 127.0.0.1:{port} ({err.strerror})") from None
    with server:
        click.echo(f"serving {folder} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")
