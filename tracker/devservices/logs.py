"""Reading the local services' logs into an error message."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, for a start-up failure's message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
