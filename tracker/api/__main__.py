"""Entry point: `python -m tracker.api` or `tracker-api`. Read settings, serve, exit."""

from __future__ import annotations

import logging
import sys

import uvicorn

from tracker.api.app import create_app
from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env()
        if not settings.database_url:
            raise SettingsError("DATABASE_URL must be set (or use bin/run, which starts a local PostgreSQL)")
    except SettingsError as exc:
        print(f"tracker-api: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    logging.getLogger("tracker.api").info("starting with %s", settings.masked())
    app = create_app(settings, validate_responses=settings.api_validate_responses)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        server_header=False,
        date_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
