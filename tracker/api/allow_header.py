"""Correct `Allow` headers on 405 answers.

Connexion routes each operation separately, so a 405 on a path that has both
GET and POST lists only one of them. RFC 9110 wants every allowed method; the
spec knows them, so this middleware fills them in from the spec's paths.
"""

from __future__ import annotations

import re


class AllowHeaderMiddleware:
    def __init__(self, app, spec_paths: dict) -> None:
        self.app = app
        self.paths = [
            (
                re.compile("^" + re.sub(r"\\{[^/}]+\\}", "[^/]+", template) + "$"),
                ", ".join(sorted(m.upper() for m in methods if m in {"get", "post", "put", "patch", "delete"})),
            )
            for template, methods in spec_paths.items()
        ]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_wrapper(message):
            if message["type"] == "http.response.start" and message["status"] == 405:
                allowed = next((m for pattern, m in self.paths if pattern.match(scope["path"])), None)
                if allowed:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    message = {**message, "headers": headers + [(b"allow", allowed.encode())]}
            await send(message)

        await self.app(scope, receive, send_wrapper)
