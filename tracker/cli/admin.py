"""Commands that set things up: run the stack, migrate, apply retention, create topics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from tracker.cli.exits import EXIT_USAGE
from tracker.settings import Settings, SettingsError


def cmd_up(args, settings: Settings) -> int:
    from tracker.devservices.stack import up

    for flag, value in (("--consumers", args.consumers), ("--api-workers", args.api_workers)):
        if value is not None and value < 1:
            raise SettingsError(f"{flag} must be at least 1, got {value}")
    if args.consumers is not None:
        settings = dataclasses.replace(settings, consumer_processes=args.consumers)
    if args.api_workers is not None:
        settings = dataclasses.replace(settings, api_workers=args.api_workers)
    if settings.auth is None:
        # The stack README's run command starts is protected unless asked otherwise; the API's
        # own default (off, with a warning at start) serves deployments that configure it.
        settings = dataclasses.replace(settings, auth="on")
    elif not settings.auth_enabled:
        print("tracker up: TRACKER_AUTH=off -- the API will answer anyone, tokens or not", file=sys.stderr)
    return up(settings)


def cmd_migrate(args, settings: Settings) -> int:
    from tracker.migrate import migrate

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set")
    applied = asyncio.run(migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "up to date")
    if settings.admin_token:
        import asyncpg

        from tracker.tokens import ensure_admin_token

        async def store() -> bool:
            conn = await asyncpg.connect(settings.database_url)
            try:
                return await ensure_admin_token(conn, settings.admin_token or "", "TRACKER_ADMIN_TOKEN")
            finally:
                await conn.close()

        try:
            created = asyncio.run(store())
        except ValueError as exc:
            print(f"tracker migrate: TRACKER_ADMIN_TOKEN: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print("admin token from TRACKER_ADMIN_TOKEN: " + ("stored" if created else "already stored"))
    return 0


def cmd_grant_reader(args, settings: Settings) -> int:
    import asyncpg

    from tracker.roles import grant_reader

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set (as the schema's owner, the role migrations run as)")

    async def go():
        conn = await asyncpg.connect(settings.database_url)
        try:
            await grant_reader(conn, args.role)
        finally:
            await conn.close()

    try:
        asyncio.run(go())
    except ValueError as exc:
        print(f"tracker grant-reader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.role} may now read this database and mark tokens' last use; give the API its DATABASE_URL")
    return 0


def cmd_retention(args, settings: Settings) -> int:
    from tracker.maintenance import maintenance_round

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set")
    result = asyncio.run(maintenance_round(settings))
    print(
        json.dumps(
            {
                "retention_days": settings.retention_days,
                "partitions_created": result.created,
                "partitions_dropped": result.dropped,
                "traces_deleted": result.traces_deleted,
            }
        )
    )
    return 0


def cmd_topics(args, settings: Settings) -> int:
    from tracker.kafka import client_options
    from tracker.topics import ensure_topics

    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set")
    created = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.topic, settings.dlq_topic],
            settings.topic_partitions,
            max_message_bytes=settings.max_message_bytes,
            client_options=client_options(settings),
        )
    )
    print("created: " + ", ".join(created) if created else "topics exist")
    return 0
