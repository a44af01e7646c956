"""Successful answers: a JSON body, and a page of rows with the cursor of the next one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from tracker.api import cursor as cursors
from tracker.api.problems import bad_request


def ok(body, status: int = 200, headers: dict[str, str] | None = None):
    """A JSON body; the content type is explicit because operations also declare problem+json."""
    return body, status, {"Content-Type": "application/json", **(headers or {})}


def after(cursor: str | None, *, numbered: bool = False) -> tuple[datetime, Any] | None:
    """The position a cursor from a previous page stands for, or None for the first page;
    400 with what to do for a cursor this API did not return."""
    if not cursor:
        return None
    try:
        return cursors.decode_numbered(cursor) if numbered else cursors.decode(cursor)
    except cursors.BadCursor as exc:
        raise bad_request(str(exc)) from None


def page(rows: Sequence, limit: int, key: Callable[[Any], tuple[datetime, Any]], out: Callable[[Any], dict]):
    """``rows`` were fetched with ``limit + 1``: the extra row, if there, only says that a next
    page exists, and the cursor to it is the last shown row's ``key`` (time, id)."""
    shown = rows[:limit]
    next_cursor = cursors.encode(*key(shown[-1])) if len(rows) > limit else None
    return ok({"data": [out(row) for row in shown], "next_cursor": next_cursor})
