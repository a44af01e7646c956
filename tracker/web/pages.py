"""The web pages: search, one trace, CSV export, sign-in. Rendered by the API process with
Jinja2 (installed with Connexion), from the same queries the public API runs (tracker.queries,
with the same tenant filter), so the pages cannot show what the API would not.

Mounted in front of Connexion's routing (tracker/api/app.py): this ASGI middleware answers its
own paths and hands every other request on. With TRACKER_AUTH=on a person signs in once with a
token (or an OIDC JWT); it is kept in an HttpOnly, SameSite=Strict cookie, checked like a
bearer header by the API's Authenticator (cache, scopes, tenants, limits), never readable by
the page's JavaScript. The script on the trace page only re-fetches that page's live part.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from urllib.parse import urlencode

import orjson
from connexion.exceptions import ProblemException
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles

from tracker.api import cursor as cursors
from tracker.api import params
from tracker.api.auth import COOKIE, Authenticator, limited
from tracker.api.deadletters import dead_letter_out
from tracker.api.limits import TokenLimits
from tracker.db import TRANSIENT_ERRORS
from tracker.events import ERROR_STATUSES
from tracker.queries import deadletters, search, stats
from tracker.queries import traces as q
from tracker.spec import spec
from tracker.tenants import Tenants

log = logging.getLogger("tracker.web")

HERE = Path(__file__).parent
COOKIE_SECONDS = 8 * 3600
PAGE_SIZE = 50
# The search page's time presets, as the API's lookback durations.
PRESETS = ("15m", "1h", "6h", "24h", "7d")
FILTERS = search.TRACE_FILTERS
HISTORY_LIMIT = 1000
NOW_WINDOWS = ("15m", "1h", "6h", "24h")
# The dead letters' reasons: the enum of GET /v1/dead-letters?reason= in the spec.
REJECT_REASONS = tuple(
    next(p for p in spec()["paths"]["/v1/dead-letters"]["get"]["parameters"] if p.get("name") == "reason")["schema"][
        "enum"
    ]
)

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), enable_async=False
)


def _fmt_time(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    # isoformat and slicing: a third of strftime's cost, on every row of a trace's history.
    text = value.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds")
    return text[:23] + "Z"


def _fmt_seconds(value) -> str:
    if value is None:
        return ""
    seconds = float(value)
    return (
        f"{seconds * 1000:.0f} ms"
        if seconds < 1
        else f"{seconds:.2f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
    )


def _pretty(value) -> str:
    """JSON for people, by orjson: Jinja's tojson (the json module) took a third of the render
    of a 1,000-event trace page. Escaped by the template's autoescape like any text."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


templates.filters["time"] = _fmt_time
templates.filters["pretty"] = _pretty
templates.filters["seconds"] = _fmt_seconds


class PageError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def neutralise(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP: CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class WebPages:
    """ASGI middleware: the pages' paths here, everything else to ``app`` (Connexion)."""

    def __init__(self, app, auth_enabled: bool, authenticator: Authenticator | None, limits: TokenLimits | None):
        self.app = app
        self.auth_enabled = auth_enabled
        self.authenticator = authenticator
        self.limits = limits
        self.router = Router(
            routes=[
                Route("/", self.search_page),
                Route("/traces.csv", self.search_csv),
                Route("/events", self.events_page),
                Route("/now", self.now_page),
                Route("/rejected", self.rejected_page),
                Route("/traces/{trace_id:path}/live", self.trace_live),
                Route("/traces/{trace_id:path}", self.trace_page),
                Route("/signin", self.signin, methods=["GET", "POST"]),
                Route("/signout", self.signout, methods=["POST"]),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            ]
        )
        self.paths = ("/", "/traces.csv", "/events", "/now", "/rejected", "/signin", "/signout")

    def _ours(self, path: str) -> bool:
        return path in self.paths or path.startswith(("/traces/", "/static/"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._ours(scope["path"]):
            return await self.app(scope, receive, send)
        await self.router(scope, receive, send)

    # --- who is asking -------------------------------------------------------------------

    async def _identity(self, request: Request, needed: str = "read"):
        """The cookie's token identity, or None when auth is off; PageError / a redirect to the
        sign-in page otherwise."""
        if not self.auth_enabled:
            return None
        token = request.cookies.get(COOKIE)
        if not token:
            raise _SignIn(request)
        assert self.authenticator is not None
        try:
            return await self.authenticator.identify(request.state.pool, token, needed)
        except ProblemException as exc:
            if exc.status == 401:
                raise _SignIn(request, "Your token is unknown, revoked or expired; sign in again.") from None
            raise PageError(403, "Not allowed", exc.detail or "This page needs another scope.") from None

    async def _serve(self, request: Request, render, needed: str = "read") -> Response:
        """Run ``render(request, tenants)`` as the identity allows, within its limits; every
        failure a readable page."""
        try:
            info = await self._identity(request, needed)
            tenants = info.tenants if info is not None else None
            if info is None or self.limits is None or self.authenticator is None:
                return await render(request, tenants)
            holder: dict[str, Response] = {}

            async def app(scope, receive, send):
                holder["response"] = await render(request, tenants)

            await limited(self.limits, self.authenticator, info, app, request.scope, request.receive, None)
            return holder["response"]
        except _SignIn as redirect:
            return redirect.response()
        except PageError as exc:
            return self._error(request, exc.status, exc.title, exc.detail)
        except ProblemException as exc:  # a bad filter (params.*), over a limit
            headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"}
            return self._error(request, exc.status, exc.title or "Error", exc.detail or "", headers)
        except TRANSIENT_ERRORS:
            log.warning("page %s: database unavailable", request.url.path, exc_info=True)
            return self._error(request, 503, "Unavailable", "The database is not answering; try again in a moment.")

    def _render(self, request: Request, name: str, status: int = 200, headers=None, **context) -> HTMLResponse:
        context.setdefault("signed_in", self.auth_enabled and bool(request.cookies.get(COOKIE)))
        body = templates.get_template(name).render(request=request, auth=self.auth_enabled, **context)
        response = HTMLResponse(body, status_code=status, headers=headers)
        # The pages carry traces' data: never cached by a shared cache, never framed elsewhere.
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        # Inline style attributes only (the timeline's bar positions); scripts from this site only.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        )
        return response

    def _error(self, request: Request, status: int, title: str, detail: str, headers=None) -> HTMLResponse:
        return self._render(request, "error.html", status=status, headers=headers, title=title, detail=detail)

    # --- sign-in ---------------------------------------------------------------------------

    async def signin(self, request: Request) -> Response:
        target = _local(request.query_params.get("next", "/"))
        if not self.auth_enabled:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self._render(request, "signin.html", next=target, message=request.query_params.get("message"))
        form = await request.form()
        token = str(form.get("token", "")).strip()
        target = _local(str(form.get("next", "/")))
        assert self.authenticator is not None
        try:
            await self.authenticator.identify(request.state.pool, token, "read")
        except ProblemException as exc:
            detail = "That token is unknown, revoked or expired." if exc.status == 401 else exc.detail
            return self._render(request, "signin.html", status=exc.status, next=target, message=detail)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def signout(self, request: Request) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- search ----------------------------------------------------------------------------

    def _criteria(self, request: Request) -> dict:
        """The search's criteria from the page's query string (the API's parameters, checked
        by the API's own rules: a bad value is a readable 400)."""
        query = request.query_params
        filters: dict[str, object] = {name: (query.get(name) or None) for name in FILTERS}
        if filters.get("done") is not None:
            if filters["done"] not in ("true", "false"):
                raise PageError(400, "Bad filter", "done must be true or false")
            filters["done"] = filters["done"] == "true"
        lookback = query.get("lookback") or (None if query.get("since") else "24h")
        since, until = params.window(query.get("since") or None, query.get("until") or None, lookback)
        return {
            "filters": filters,
            "since": since,
            "until": until,
            "min_duration": params.duration(query.get("min_duration") or None, "min_duration"),
            "max_duration": params.duration(query.get("max_duration") or None, "max_duration"),
        }

    async def search_page(self, request: Request) -> Response:
        async def render(request: Request, tenants: Tenants | None) -> Response:
            criteria = self._criteria(request)
            position = _position(request.query_params.get("cursor"))
            async with request.state.reads.acquire() as conn:
                rows = await search.search_traces(
                    conn, **criteria, after=position, limit=PAGE_SIZE + 1, tenants=tenants
                )
            shown = rows[:PAGE_SIZE]
            more = (
                self._next(request, shown[-1]["created_at"], shown[-1]["trace_id"]) if len(rows) > PAGE_SIZE else None
            )
            kept = _kept(request)
            return self._render(
                request,
                "search.html",
                rows=shown,
                more=more,
                query=request.query_params,
                presets=PRESETS,
                lookback=request.query_params.get("lookback") or ("" if request.query_params.get("since") else "24h"),
                csv_link="/traces.csv" + ("?" + urlencode(kept) if kept else ""),
                filters=FILTERS,
            )

        return await self._serve(request, render)

    async def search_csv(self, request: Request) -> Response:
        """The whole result, not one page: walked through the same cursor, streamed."""

        async def render(request: Request, tenants: Tenants | None) -> Response:
            criteria = self._criteria(request)
            reads = request.state.reads

            async def rows():
                out = io.StringIO()
                writer = csv.writer(out)
                columns = ["trace_id", "status", "done", "first_seen", "last_seen", "elapsed_seconds",
                           "event_count", "error_count", *search.TRACE_ATTRIBUTES]  # fmt: skip
                writer.writerow(columns)
                position = None
                while True:
                    async with reads.acquire() as conn:
                        page = await search.search_traces(conn, **criteria, after=position, limit=500, tenants=tenants)
                    for r in page:
                        writer.writerow(
                            neutralise(v)
                            for v in (
                                r["trace_id"],
                                r["status"],
                                r["done"],
                                r["first_at"].isoformat(),
                                r["last_at"].isoformat(),
                                (r["last_at"] - r["first_at"]).total_seconds(),
                                r["event_count"],
                                r["error_count"],
                                *(r[a] for a in search.TRACE_ATTRIBUTES),
                            )  # fmt: skip
                        )
                    yield out.getvalue()
                    out.seek(0)
                    out.truncate()
                    if len(page) < 500:
                        return
                    position = (page[-1]["created_at"], page[-1]["trace_id"])

            return StreamingResponse(
                rows(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="traces.csv"', "Cache-Control": "no-store"},
            )

        return await self._serve(request, render)

    # --- events, now, rejected ---------------------------------------------------------------

    def _next(self, request: Request, ts: datetime, key) -> str:
        """The link to the page after this one: the same filters, the cursor of its last row."""
        return request.url.path + "?" + urlencode({**_kept(request), "cursor": cursors.encode(ts, key)})

    async def events_page(self, request: Request) -> Response:
        """The statuses across traces (GET /v1/events) with its filters."""

        async def render(request: Request, tenants: Tenants | None) -> Response:
            query = request.query_params
            filters = {name: (query.get(name) or None) for name in search.EVENT_FILTERS}
            lookback = query.get("lookback") or (None if query.get("since") else "1h")
            since, until = params.window(query.get("since") or None, query.get("until") or None, lookback)
            position = _position(query.get("cursor"))
            async with request.state.reads.acquire() as conn:
                rows = await search.search_events(
                    conn, filters=filters, since=since, until=until, after=position, limit=PAGE_SIZE + 1,
                    tenants=tenants,
                )  # fmt: skip
            shown = rows[:PAGE_SIZE]
            more = self._next(request, shown[-1]["ts"], shown[-1]["event_id"]) if len(rows) > PAGE_SIZE else None
            return self._render(
                request, "events.html", rows=shown, more=more, query=query, presets=PRESETS,
                lookback=lookback or "", filters=search.EVENT_FILTERS,
            )  # fmt: skip

        return await self._serve(request, render)

    async def now_page(self, request: Request) -> Response:
        """Per service over a window: events, failures, success rate, elapsed percentiles, the
        latest failed traces, and counts per minute; from the rollups (admin: platform-wide)."""

        async def render(request: Request, tenants: Tenants | None) -> Response:
            window = request.query_params.get("window") or "1h"
            if window not in NOW_WINDOWS:
                raise PageError(400, "Bad window", f"window must be one of {', '.join(NOW_WINDOWS)}")
            now = datetime.now(UTC)
            since = params.before(now, params.duration(window, "window"))
            width = timedelta(minutes=1) if window in ("15m", "1h") else timedelta(minutes=10 if window == "6h" else 60)
            async with request.state.reads.acquire() as conn:
                services = await stats.services(conn, since)
                elapsed = {r["service"]: r for r in await stats.elapsed_percentiles(conn, since, None)}
                counts = orjson.loads(await stats.counts_document(conn, since, width, None))["data"]
                failed = await search.search_traces(
                    conn, filters={"status": "failed"}, since=since, limit=10, tenants=tenants
                )
            rows = [
                {**dict(s), "rate": s["success"] / (s["success"] + s["error"]) if s["success"] + s["error"] else None,
                 **{k: elapsed.get(s["service"], {}).get(k) for k in ("p50", "p95", "p99")}}
                for s in services
            ]  # fmt: skip
            return self._render(
                request, "now.html", rows=rows, failed=failed, window=window, windows=NOW_WINDOWS,
                chart=_chart(counts, since, now, width), width=f"{width.total_seconds() / 60:g} min",
            )  # fmt: skip

        return await self._serve(request, render, needed="admin")

    async def rejected_page(self, request: Request) -> Response:
        """The dead letters (GET /v1/dead-letters): why, from where, when, a bounded excerpt."""

        async def render(request: Request, tenants: Tenants | None) -> Response:
            query = request.query_params
            reason = query.get("reason") or None
            lookback = query.get("lookback") or (None if query.get("since") else "24h")
            since, until = params.window(query.get("since") or None, query.get("until") or None, lookback)
            position = _position(query.get("cursor"), numbered=True)
            async with request.state.reads.acquire() as conn:
                rows = await deadletters.list_dead_letters(
                    conn, reason=reason, since=since, until=until, after=position, limit=PAGE_SIZE + 1
                )
            shown = [dead_letter_out(r) for r in rows[:PAGE_SIZE]]
            last = rows[PAGE_SIZE - 1] if len(rows) > PAGE_SIZE else None
            more = self._next(request, last["received_at"], last["id"]) if last is not None else None
            return self._render(
                request, "rejected.html", rows=shown, more=more, query=query, presets=PRESETS,
                lookback=lookback or "", reasons=REJECT_REASONS,
            )  # fmt: skip

        return await self._serve(request, render, needed="admin")

    # --- one trace -------------------------------------------------------------------------

    async def _trace(self, request: Request, tenants: Tenants | None) -> dict:
        trace_id = request.path_params["trace_id"]
        async with request.state.reads.acquire() as conn:
            document = await q.fetch_trace_document(conn, trace_id, tenants)
            if document is None:
                raise PageError(
                    404,
                    "Unknown trace",
                    f"No event has been seen for trace {trace_id!r}. Check the id; events are visible "
                    "about a second after they are produced.",
                )
            events = await q.fetch_events(
                conn, trace_id, descending=False, include_body=True, after=None, limit=HISTORY_LIMIT + 1
            )
        trace = orjson.loads(document)
        shown = events[:HISTORY_LIMIT]
        return {"trace": trace, "events": shown, "history": _history(shown), "truncated": len(events) > HISTORY_LIMIT,
                "timeline": _timeline(trace)}  # fmt: skip

    async def trace_page(self, request: Request) -> Response:
        async def render(request: Request, tenants: Tenants | None) -> Response:
            return self._render(request, "trace.html", **await self._trace(request, tenants))

        return await self._serve(request, render)

    async def trace_live(self, request: Request) -> Response:
        """The part of the trace page that changes, for the page's script to swap in."""

        async def render(request: Request, tenants: Tenants | None) -> Response:
            return self._render(request, "trace_live.html", **await self._trace(request, tenants))

        return await self._serve(request, render)


def _history(events) -> Markup:
    """The history's rows, built here rather than in the template: for a 1,000-event trace the
    template's per-cell escaping and lookups took 21 ms of a page whose target is 50 ms
    (bench/query); html.escape on each value is the same escaping (markupsafe's, which returns
    Markup objects, was slower here), ~10 ms."""
    out = []
    for e in events:
        cells = "".join(
            f"<td>{escape(str(v))}</td>" for v in (_fmt_time(e["ts"]), e["service"], e["operation"] or "", e["status"])
        )
        body, meta = e["body"], e["meta"]
        details = ""
        if body is not None or e["exception"] or meta is not None or e["errors"]:
            parts = []
            if isinstance(body, dict) and (body.get("files_incoming") or body.get("files_outgoing")):
                incoming = ", ".join(map(str, body.get("files_incoming") or []))
                outgoing = ", ".join(map(str, body.get("files_outgoing") or []))
                parts.append(f'<p class="lineage">files in: {escape(incoming)} → out: {escape(outgoing)}</p>')
            if e["errors"]:
                parts.append(f"<p>errors: {escape('; '.join(e['errors']))}</p>")
            if e["exception"]:
                parts.append(f"<pre>{escape(e['exception'])}</pre>")
            if meta is not None:
                parts.append(f"<pre>meta: {escape(_pretty(meta))}</pre>")
            if body is not None:
                parts.append(f"<pre>body: {escape(_pretty(body))}</pre>")
            key = escape(e["event_id"])
            details = f'<details data-key="{key}"><summary>details</summary>{"".join(parts)}</details>'
        out.append(
            f'<tr class="{"failed" if e["failed"] else ""}" data-event="{escape(e["event_id"])}">{cells}'
            f"<td>{escape(e['message'] or '')}{details}</td></tr>"
        )
    return Markup("\n".join(out))


def _timeline(trace: dict) -> list[dict]:
    """One bar per service, from its first to its last event, as percentages of the trace."""
    services = trace["services"]
    if not services:
        return []
    start = datetime.fromisoformat(trace["first_seen"])
    span = max((datetime.fromisoformat(trace["last_seen"]) - start).total_seconds(), 1e-3)
    bars = []
    for s in services:
        first = (datetime.fromisoformat(s["first_seen"]) - start).total_seconds()
        length = (datetime.fromisoformat(s["last_seen"]) - datetime.fromisoformat(s["first_seen"])).total_seconds()
        outcome = "failed" if s["failed"] else "done" if s["latest_status"] in ("success", "done") else "running"
        width = max(100 * length / span, 0.5)  # an instant still shows
        bars.append({**s, "left": min(100 * first / span, 100 - width), "width": width, "outcome": outcome})
    return bars


def _position(cursor: str | None, *, numbered: bool = False):
    """Where a page's "More" link starts (the API's cursors); a made-up one is a 400 page."""
    try:
        if not cursor:
            return None
        return cursors.decode_numbered(cursor) if numbered else cursors.decode(cursor)
    except cursors.BadCursor as exc:
        raise PageError(400, "Bad link", str(exc)) from None


def _kept(request: Request) -> dict[str, str]:
    """The page's filters as given, without its cursor."""
    return {k: v for k, v in request.query_params.items() if k != "cursor" and v}


def _chart(counts: list[dict], since: datetime, now: datetime, width: timedelta) -> dict:
    """Counts per bucket as SVG bar geometry (events and, on top, failures): drawn by the
    server, so the page needs no charting library."""
    totals: dict[str, list[int]] = {}
    for c in counts:
        slot = totals.setdefault(c["bucket"], [0, 0])
        slot[0] += c["events"]
        if c["status"] in ERROR_STATUSES:
            slot[1] += c["events"]
    n = max(1, int((now - since) / width) + 1)
    start = since.timestamp() // width.total_seconds() * width.total_seconds()
    peak = max([t[0] for t in totals.values()], default=0) or 1
    bars = []
    for key, (events, errors) in totals.items():
        i = int((datetime.fromisoformat(key).timestamp() - start) // width.total_seconds())
        if 0 <= i < n:
            bars.append({"x": i * 600 / n, "w": max(600 / n - 1, 1), "h": 100 * events / peak,
                         "e": 100 * errors / peak, "label": f"{key}: {events} events, {errors} failed"})  # fmt: skip
    return {"bars": bars, "peak": peak}


def _local(target: str) -> str:
    """Only a path of this site after sign-in: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


class _SignIn(Exception):
    def __init__(self, request: Request, message: str | None = None) -> None:
        super().__init__(message or "")
        self.target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.message = message

    def response(self) -> Response:
        query = {"next": self.target, **({"message": self.message} if self.message else {})}
        return RedirectResponse("/signin?" + urlencode(query), status_code=303)


__all__ = ["WebPages", "neutralise"]
