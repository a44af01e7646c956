"""The event schemas as msgspec types: parse_message's common case in one pass of C.

Why: turning a message into an Event was a third of a consumer's CPU (bench/ingest's profile,
README): orjson.loads and the checks around it, the compiled validator walking the dict, the
Event read from dict lookups, the free-form fields serialised again for their jsonb columns,
and for a Payload Tracker message (no id of its own) the whole dict serialised again to
derive its id. msgspec decodes and checks types, lengths and enums in one pass into a struct,
never builds the dict, keeps `meta` and `body` as the JSON text the producer sent, and writes
the canonical JSON of a flat message (all strings) straight from the struct.

This path only ever answers "this Event" or "ask the full path" (tracker/events.py): it must
accept a subset of what the full path accepts, and build exactly the same Event for it. So
its types are narrower where they cannot be exact: where a schema allows several shapes (an
error given as an object, an exception as an object) only the string one; no field outside
the schema (an unknown or legacy name goes the full way, which renames or keeps it). The
message-level conditions (no escape, no control character, valid UTF-8, not too deep) are
tracker.events._typed_candidate's. tests/test_events.py checks on generated messages that
whatever this path accepts, the full path turns into the same Event.

The types are built from the OpenAPI document at first use; a keyword this module does not
know raises SchemaNotTyped there (in the tests), never a looser check in production.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from tracker.spec import spec

# A Raw field not given, or given as null: both mean "not given" (as in the full path).
NULL = msgspec.Raw(b"null")
# Errors that mean "not this path": the full path decides, and says why.
NOT_TYPED = (msgspec.MsgspecError, UnicodeDecodeError)

_ANNOTATIONS = frozenset({"description", "example", "examples", "title", "x-legacy-names", "default", "format"})
# The identifier patterns refuse control characters only (a message that reaches this path
# has none); the trace id's also refuses the ancestors' placeholders, which the Event builder
# checks (tracker.events.TRACE_ID_PLACEHOLDERS).
_CONTROL = "[^\\x00-\\x1f\\x7f-\\x9f]{1,%d}(?![\\s\\S])"
_PATTERNS = ("^" + _CONTROL, "^(?!(-1|None|null)$)" + _CONTROL)


class SchemaNotTyped(Exception):
    """A schema keyword that this module cannot turn into an exact msgspec type."""


def _resolve(schema: dict, components: dict) -> dict:
    """Follow $ref, and an allOf of one schema (a description beside a $ref)."""
    while True:
        if "$ref" in schema:
            schema = components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif len(schema.get("allOf", ())) == 1 and not set(schema) - _ANNOTATIONS - {"allOf"}:
            schema = schema["allOf"][0]
        else:
            return schema


def _keywords(schema: dict, allowed: set[str]) -> None:
    unknown = set(schema) - _ANNOTATIONS - allowed
    if unknown:
        raise SchemaNotTyped(f"keywords {sorted(unknown)} in {schema}")


def _type(schema: dict, components: dict) -> Any:
    """The msgspec type of a property: exactly what ``schema`` accepts of a plain-text message,
    or a subset (the string shape of a oneOf); msgspec.Raw for free-form JSON."""
    schema = _resolve(schema, components)
    alternatives = schema.get("oneOf", schema.get("anyOf"))
    if alternatives is not None:
        _keywords(schema, {"oneOf", "anyOf"})
        strings = [s for s in alternatives if _resolve(s, components).get("type") == "string"]
        if not strings:
            raise SchemaNotTyped(f"alternatives without a string shape: {schema}")
        return _type(strings[0], components)
    kind = schema.get("type")
    if kind is None:
        _keywords(schema, set())
        return msgspec.Raw  # any JSON value
    if kind == "object":
        _keywords(schema, {"type"})
        return msgspec.Raw  # any object; the builder checks it is one (is_object)
    if kind == "number":
        _keywords(schema, {"type", "minimum"})
        return Annotated[float, msgspec.Meta(ge=schema["minimum"])] if "minimum" in schema else float
    if kind == "array":
        _keywords(schema, {"type", "items", "maxItems"})
        return Annotated[list[_type(schema["items"], components)], msgspec.Meta(max_length=schema.get("maxItems"))]  # type: ignore[misc]
    if kind == "string":
        _keywords(schema, {"type", "minLength", "maxLength", "pattern", "enum"})
        if "enum" in schema:
            return Literal[tuple(schema["enum"])]
        if "pattern" in schema and not (
            schema.get("minLength") == 1 and schema["pattern"] in [p % schema["maxLength"] for p in _PATTERNS]
        ):
            raise SchemaNotTyped(f"pattern {schema['pattern']!r}")
        return Annotated[str, msgspec.Meta(min_length=schema.get("minLength"), max_length=schema.get("maxLength"))]
    raise SchemaNotTyped(f"type {kind!r}")


class TypedSchema:
    """One event schema as a msgspec decoder (``decode``: bytes -> struct, or raises one of
    NOT_TYPED), and whether its structs encode to the canonical JSON of their message."""

    def __init__(self, schema_name: str) -> None:
        components = spec()["components"]
        schema = components["schemas"][schema_name]
        # anyOf at the top (the Status API's "end_time or start_time") is the builder's check.
        _keywords(schema, {"type", "required", "properties", "anyOf"})
        required = set(schema.get("required", ()))
        if required - set(schema["properties"]):
            raise SchemaNotTyped(f"{schema_name}: required but not described: {sorted(required)}")
        fields: list[tuple] = []
        # Sorted by name: msgspec writes a struct's fields in their declared order and leaves
        # out those at their default (None), so a flat struct encodes to the canonical JSON
        # that derive_event_id hashes (sorted keys, no nulls).
        for name, prop in sorted(schema["properties"].items()):
            typ = _type(prop, components)
            if typ is msgspec.Raw:
                fields.append((name, typ, NULL))
            elif name in required:
                fields.append((name, typ))
            else:
                fields.append((name, typ | None, None))
        struct = msgspec.defstruct(schema_name, fields, kw_only=True, forbid_unknown_fields=True, omit_defaults=True)
        self.decode = msgspec.json.Decoder(struct).decode
        self.flat = all(_resolve(p, components).get("type") == "string" for p in schema["properties"].values())


_encode = msgspec.json.Encoder().encode
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def canonical_event_id(struct: Any, namespace: Any) -> str:
    """derive_event_id of a flat message, from its struct: uuid5 over the namespace and the
    struct's JSON (its canonical JSON: see TypedSchema). ``namespace``: a hashlib.sha1 of the
    namespace's bytes, copied here rather than hashed again. From the hex digest: the version
    nibble is written as 5, the variant nibble's top bits as 10."""
    digest = namespace.copy()
    digest.update(_encode(struct))
    x = digest.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def text(raw: msgspec.Raw) -> orjson.Fragment | None:
    """A free-form field as the Event holds it: its JSON text as the producer sent it (jsonb
    normalises it as it stores it), copied to bytes of its own (a Raw holds on to the whole
    message); None when not given."""
    return None if raw == NULL else orjson.Fragment(bytes(raw))


def is_object(raw: msgspec.Raw) -> bool:
    """A free-form field that must be an object is one, or is not given."""
    return raw == NULL or memoryview(raw)[0] == 0x7B  # "{"
