"""Entry point: `python -m consumer` or `tracker-consumer`. Read settings, run, exit."""

from __future__ import annotations

import logging
import sys

from consumer.group import run_group
from consumer.service import serve
from tracker.events import prepare_validators
from tracker.kafka import client_options
from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env().require_services()
        client_options(settings)  # the Kafka security settings, checked before anything starts
    except SettingsError as exc:
        print(f"tracker-consumer: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    logging.getLogger("tracker.consumer").info("starting with %s", settings.masked())
    prepare_validators()  # before a fork: once for all members
    if settings.consumer_processes > 1:
        return run_group(settings, serve)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
