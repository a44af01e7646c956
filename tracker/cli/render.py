"""Terminal output: aligned tables, and text from the API made safe to print."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """Text from the API made safe for a terminal: control characters shown escaped (\\n,
    \\x1b), never interpreted. Events are untrusted input; an escape sequence in one must
    not drive the reader's terminal, a newline must not break a table row."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def table(rows: list[tuple], headers: tuple) -> str:
    """A plain aligned table; a dependency would add nothing these few lines do not do."""
    cells = [tuple(str(v) for v in headers)] + [tuple("-" if v is None else printable(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)
