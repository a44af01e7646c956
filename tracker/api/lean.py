"""The trace document, the route people and scripts poll, answered without Connexion's
per-request handler machinery.

Connexion 3 decorates the handler again on every request (a parameter decorator that
rebuilds the keyword arguments from the request, a response decorator, a request object and
its context variables): under `bench/query`'s trace lookup that was ~34 % of the API
process's CPU samples (py-spy), more than the handler and its query (~22 %). This middleware
sits at the end of Connexion's stack, after routing, security, request validation (strict:
an unknown query parameter, a trace id outside the spec's pattern are refused as before) and
response validation (on in tests), so the answer is checked exactly as the handler's is;
it only replaces the last step for ``get_trace`` when the trace exists. An unknown trace goes
on to the handler, which asks again and answers the spec's 404 problem: the one place that
words it.
"""

from __future__ import annotations

from starlette.responses import Response

from tracker.api.routing import operation_id
from tracker.queries.traces import fetch_trace_document

GET_TRACE = "tracker.api.traces.get_trace"


class TraceDocumentMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if operation_id(scope) == GET_TRACE:
                # The lifespan's state (tracker.api.app), as request.state gives it to handlers;
                # "tenants" is the token's (tracker/api/auth.py): only a trace of theirs is answered.
                state = scope["state"]
                async with state["reads"].acquire() as conn:
                    document = await fetch_trace_document(conn, scope["path_params"]["trace_id"], state.get("tenants"))
                if document is not None:
                    response = Response(document, media_type="application/json")
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)
