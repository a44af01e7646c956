"""Entry point: `python -m consumer` or `tracker-consumer`. Read settings, run, exit."""

from __future__ import annotations

import asyncio
import logging
import sys

from consumer.service import run
from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env().require_services()
    except SettingsError as exc:
        print(f"tracker-consumer: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    logging.getLogger("tracker.consumer").info("starting with %s", settings.masked())
    try:
        asyncio.run(run(settings))
    except Exception:
        # Neither bad data nor a passing outage: let the supervisor restart us; Kafka redelivers.
        logging.getLogger("tracker.consumer").exception("consumer failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
