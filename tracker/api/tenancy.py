"""The tenants of the request's token, for the handlers (tracker/tenants.py says what they mean).

Set by tracker/api/auth.py on each request it admits; absent (None: every trace) when
TRACKER_AUTH=off or the token is not bound.
"""

from __future__ import annotations

from connexion import request
from connexion.exceptions import ProblemException

from tracker.queries.traces import trace_exists
from tracker.tenants import Tenants, sees


def current() -> Tenants | None:
    return getattr(request.state, "tenants", None)


async def hidden(conn, trace_id: str) -> bool:
    """True when the request's token may not see this trace (it then answers as if unknown)."""
    return not await sees(conn, current(), trace_id)


async def check_publish(event) -> None:
    """A bound write token publishes only events carrying one of its tenants, to a trace that is
    new or one of its tenants' (400 otherwise): an event of tenant A on tenant B's trace would
    change what the trace carries (its least account, org or domain) and so who sees it.

    Refusing the second case tells the token that the trace id exists elsewhere; that much is
    said in README's threat model (it reads nothing of that trace)."""
    tenants = current()
    if tenants is None:
        return
    if not tenants.carries(event):
        raise ProblemException(
            status=400,
            title="Bad Request",
            detail=f"This token publishes only events of its tenants ({tenants.describe()}); "
            "this event carries none of them.",
        )
    async with request.state.reads.acquire() as conn:
        if await trace_exists(conn, event.trace_id) and not await sees(conn, tenants, event.trace_id):
            raise ProblemException(
                status=400,
                title="Bad Request",
                detail=f"Trace {event.trace_id!r} is not one of this token's tenants' traces; "
                "publish under a new trace id.",
            )
