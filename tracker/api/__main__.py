"""Entry point: `python -m tracker.api [--workers N]` or `tracker-api`. Read settings, serve, exit."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

import uvicorn

from tracker.api.app import create_app
from tracker.api.oidc import OidcVerifier
from tracker.kafka import client_options
from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError


def app_from_environment():
    """The application of one worker process (uvicorn's factory, with --workers > 1): each
    worker reads the same settings from the environment and opens its own pool."""
    settings = Settings.from_env()
    setup_logging(settings.log_level)
    return create_app(settings, validate_responses=settings.api_validate_responses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracker-api", description="Serve the tracker's REST API.")
    parser.add_argument("--workers", type=int, help="worker processes (default: TRACKER_API_WORKERS, 1)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.workers is not None:
            if args.workers < 1:
                raise SettingsError(f"--workers must be at least 1, got {args.workers}")
            settings = dataclasses.replace(settings, api_workers=args.workers)
        if not settings.database_url:
            raise SettingsError("DATABASE_URL must be set (or use bin/run, which starts a local PostgreSQL)")
        settings.auth_enabled  # noqa: B018 -- refuses a TRACKER_AUTH that is neither on nor off
        client_options(settings)  # the Kafka security settings of its producer
        if settings.oidc_issuer:
            if not settings.auth_enabled:
                raise SettingsError("TRACKER_OIDC_ISSUER is set but TRACKER_AUTH is off: set TRACKER_AUTH=on")
            OidcVerifier(settings)  # the audience, the key file and the claim mapping, checked now
    except SettingsError as exc:
        print(f"tracker-api: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    logging.getLogger("tracker.api").info("starting with %s", settings.masked())
    if not settings.auth_enabled:
        logging.getLogger("tracker.api").warning(
            "TRACKER_AUTH=off: anyone who can reach %s:%s reads every trace and publishes events; "
            "set TRACKER_AUTH=on (README: Tokens) unless this is a throwaway demo",
            settings.api_host,
            settings.api_port,
        )
    options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "lifespan": "on",
        "server_header": False,
        "date_header": False,
    }
    if settings.api_workers > 1:
        # uvicorn's supervisor binds the port once and starts the workers, which share it (the
        # kernel spreads the connections) and read the same environment; a worker that dies is
        # replaced.
        uvicorn.run("tracker.api.__main__:app_from_environment", factory=True, workers=settings.api_workers, **options)
    else:
        uvicorn.run(create_app(settings, validate_responses=settings.api_validate_responses), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
