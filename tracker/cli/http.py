"""The CLI's HTTP client of the API (aiohttp): GET a path, and run a command's requests with
failures mapped to the exit codes."""

from __future__ import annotations

import asyncio
import sys

from tracker.cli.exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNREACHABLE
from tracker.cli.render import printable


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def get(session, api: str, path: str, params: dict | None = None):
    params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}
    async with session.get(f"{api.rstrip('/')}{path}", params=params) as response:
        body = await response.json(content_type=None)
        if response.status in (401, 403):
            raise ApiError(EXIT_FAILED, f"the API refused the request ({response.status}): {body.get('detail', body)}")
        if response.status == 404:
            raise ApiError(EXIT_NOT_FOUND, body.get("detail", "not found"))
        if response.status != 200:
            raise ApiError(EXIT_FAILED, f"the API answered {response.status}: {body.get('detail', body)}")
        return body


def run_api(args, work) -> int:
    """Run ``work(session)`` against the API; map failures to the documented exit codes."""
    import aiohttp

    async def main():
        token = getattr(args, "token", None)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers) as session:
            return await work(session)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"tracker {args.command}: {printable(exc)}", file=sys.stderr)
        return exc.code
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        print(f"tracker {args.command}: the API at {args.api} is unreachable ({exc})", file=sys.stderr)
        return EXIT_UNREACHABLE
