"""`tracker send`: one event, from flags or a JSON document on stdin, checked by the consumer's
own parser before it is produced to Kafka."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

from tracker.cli.exits import EXIT_UNREACHABLE, EXIT_USAGE
from tracker.settings import Settings, SettingsError


def _event_from_args(args) -> dict:
    if args.trace_id is None:
        text = sys.stdin.read()
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SettingsError(f"stdin is not a JSON event: {exc}") from None
    event = {
        "trace_id": args.trace_id,
        "service": args.service,
        "status": args.status,
        "timestamp": args.timestamp or datetime.now(UTC).isoformat(),
    }
    for key in ("trace_status", "message", "operation", "event_id"):
        if getattr(args, key):
            event[key] = getattr(args, key)
    if args.body:
        try:
            event["body"] = json.loads(args.body)
        except ValueError as exc:
            raise SettingsError(f"--body is not JSON ({exc}); quote it, e.g. --body '{{\"size\": 3}}'") from None
    return event


def cmd_send(args, settings: Settings) -> int:
    from tracker.events import Invalid, encode_document, parse_message
    from tracker.kafka import explain
    from tracker.producer import send_one

    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set")
    if args.trace_id is not None and not (args.service and args.status):
        raise SettingsError("--service and --status are required with --trace-id")
    value = encode_document(_event_from_args(args))
    parsed = parse_message(value, max_bytes=settings.max_message_bytes)
    if isinstance(parsed, Invalid):
        print(f"tracker send: invalid event ({parsed.reason}): {parsed.detail}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(send_one(settings, value, key=parsed.trace_id))
    except SettingsError:
        raise
    except Exception as exc:  # any Kafka failure: say so in one line
        reason = explain(settings, exc) or f"Kafka at {settings.kafka_bootstrap_servers} did not take the event: {exc}"
        print(f"tracker send: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps({"sent": True, "topic": settings.topic, "trace_id": parsed.trace_id, "event_id": parsed.event_id}))
    return 0
