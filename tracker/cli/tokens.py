"""`tracker tokens create|list|revoke`: the API's bearer tokens, straight in DATABASE_URL."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

from tracker.cli.exits import EXIT_FAILED, EXIT_USAGE
from tracker.settings import Settings, SettingsError


def add_parser(sub) -> None:
    tokens = sub.add_parser("tokens", help="create, list and revoke the API's bearer tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new token, printed once")
    create.add_argument("--name", required=True, help="who or what uses it")
    create.add_argument(
        "--scope", action="append", choices=["read", "write", "admin"], required=True, help="repeat for several"
    )
    create.add_argument("--expires-in", help="e.g. 30d, 12h (default: never)")
    for field in ("account", "org-id", "domain", "domain-id"):
        create.add_argument(
            f"--{field}",
            action="append",
            default=[],
            help=f"bind the token to this {field} (repeatable): it sees only traces carrying one of its tenants",
        )
    actions.add_parser("list", help="every token: id, name, prefix, scopes, times (never the token)")
    revoke = actions.add_parser("revoke", help="revoke a token by id (effective within TRACKER_AUTH_CACHE_SECONDS)")
    revoke.add_argument("id", type=int)
    tokens.set_defaults(func=cmd_tokens)


def cmd_tokens(args, settings: Settings) -> int:
    import asyncpg

    from tracker.api.params import duration
    from tracker.tenants import Tenants
    from tracker.tokens import create_token, list_tokens, revoke_token

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set")
    expires_at = None
    if getattr(args, "expires_in", None):
        try:
            expires_at = datetime.now(UTC) + duration(args.expires_in, "--expires-in")
        except Exception as exc:  # the API's duration check words it
            print(f"tracker tokens: {getattr(exc, 'detail', exc)}", file=sys.stderr)
            return EXIT_USAGE

    async def go() -> int:
        conn = await asyncpg.connect(settings.database_url)
        try:
            if args.action == "create":
                tenants = Tenants(
                    account=tuple(args.account),
                    org_id=tuple(args.org_id),
                    domain=tuple(args.domain),
                    domain_id=tuple(args.domain_id),
                )
                try:
                    token_id, token = await create_token(conn, args.name, args.scope, expires_at, tenants)
                except ValueError as exc:
                    print(f"tracker tokens: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                bound = f"; tenants: {tenants.describe()}" if tenants.bound else ""
                print(f"token {token_id} ({args.name}, {', '.join(sorted(set(args.scope)))}{bound}): {token}")
                print("It is shown only now; the database keeps its digest.", file=sys.stderr)
                return 0
            if args.action == "list":
                for row in await list_tokens(conn):
                    print(json.dumps(row, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))
                return 0
            if await revoke_token(conn, args.id):
                print(f"token {args.id} revoked")
                return 0
            print(f"tracker tokens: no token {args.id} that is not revoked already", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await conn.close()

    return asyncio.run(go())
