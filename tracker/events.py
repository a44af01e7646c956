"""The event model: one function turns a Kafka message into an Event or a reason it can't.

Three wire formats share the topic (see swagger/openapi.yaml); all become the
same canonical ``Event``. The schemas live in the OpenAPI document only; this
module validates with them and maps names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

import jsonschema
import orjson

from tracker import times
from tracker.schema_compiler import Invalid as SchemaInvalid
from tracker.schema_compiler import compile_schema
from tracker.spec import spec
from tracker.typed_events import NOT_TYPED, SchemaNotTyped, TypedSchema, canonical_event_id, is_object
from tracker.typed_events import text as typed_text

# Namespace of derived event ids: uuid5(namespace, canonical JSON of the message).
EVENT_ID_NAMESPACE = uuid.UUID("6f1d5a52-3c1e-4f0e-9a51-1d8e3b1f2c77")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes
MAX_DEPTH = 32
ERROR_STATUSES = frozenset({"error", "failed", "failure"})

# Reasons are a metric label and a dead-letter header: a fixed, small set.
REASONS = (
    "null_value",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "too_deep",
    "missing_field",
    "wrong_type",
    "too_long",
    "invalid_value",
    "conflicting_fields",
    "nul_character",
)


class Event(NamedTuple):
    """One status event, whatever format it came in.

    A tuple, its fields in the order of the events table's columns (EVENT_COLUMNS, below,
    derives them): copy_rows hands it to COPY as a plain tuple of the same values.
    Built once by parse_message, never changed."""

    event_id: str
    trace_id: str
    service: str
    status: str
    failed: bool
    timestamp: datetime
    trace_status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_ms: float | None = None
    source: str | None = None
    account: str | None = None
    org_id: str | None = None
    inventory_id: str | None = None
    system_id: str | None = None
    domain: str | None = None
    domain_id: str | None = None
    user: str | None = None
    operation: str | None = None
    path: str | None = None
    message: str | None = None
    errors: tuple[str, ...] = ()
    exception: str | None = None
    meta: orjson.Fragment | None = None  # JSON text (_json): the jsonb columns' value as sent
    body: orjson.Fragment | None = None
    format: str = "tracker"


# The events table's columns, in the order of Event's fields: the consumer's COPY sends an
# Event's values in this order, and the read queries select by these names.
EVENT_COLUMNS = tuple({"timestamp": "ts", "user": "username"}.get(name, name) for name in Event._fields)


_ERRORS = Event._fields.index("errors")
_errors = operator.itemgetter(_ERRORS)
_without_errors = operator.itemgetter(*(i for i in range(len(Event._fields)) if i != _ERRORS))
_COLUMNS_WITHOUT_ERRORS = tuple(c for i, c in enumerate(EVENT_COLUMNS) if i != _ERRORS)


def copy_rows(events: Sequence[Event]) -> tuple[tuple[str, ...], Iterator[tuple]]:
    """(columns, records): the events as asyncpg's COPY takes them, each as a plain tuple.

    asyncpg's COPY loop reads every field as ``row[i]``. Only for an exact tuple is that a
    direct read: a tuple subclass such as Event has no C-level item slot of its own, so CPython
    looks up and calls ``__getitem__`` for each of the 26 fields. That was the costliest
    single thing in the consumer's native profile (tuplesubscript via slot_sq_item, 6 % of its
    samples in bench/ingest). Copying each Event into a tuple first (in C, lazily) costs far
    less: 3.7 -> 2.4 µs of client CPU per event for the COPY of 5,000-event batches.

    A batch in which no event lists errors (nearly all) leaves ``errors`` out, to its default
    '{}': asyncpg encodes even an empty array through an isinstance check against an abstract
    class and its generic array code, 0.6 µs per event (2.4 -> 1.8 µs), and PostgreSQL decodes it."""
    if any(map(_errors, events)):  # () is false
        return EVENT_COLUMNS, map(tuple, events)
    return _COLUMNS_WITHOUT_ERRORS, map(_without_errors, events)


# The free-form and possibly large ones, which event lists read only when asked to.
BODY_COLUMNS = ("exception", "meta", "body")
# The tenant and origin fields a trace carries too (its first value of each, the `traces`
# columns of the same names): what searches filter traces by.
TRACE_ATTRIBUTES = ("account", "org_id", "inventory_id", "system_id", "source", "domain", "domain_id")
SUMMARY_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in BODY_COLUMNS)


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message is not an event. ``reason`` is one of REASONS; ``detail`` is for people."""

    reason: str
    detail: str


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.invalid = Invalid(reason, detail)


def _schema_document(schema_name: str) -> dict:
    # The spec's components travel along so that "#/components/schemas/..." refs resolve.
    return {"$ref": f"#/components/schemas/{schema_name}", "components": spec()["components"]}


@cache
def validator(schema_name: str) -> jsonschema.Draft4Validator:
    """The reference validator: slow, but lists every violation. Used to explain a rejection."""
    return jsonschema.Draft4Validator(_schema_document(schema_name))


@cache
def fast_validator(schema_name: str) -> Callable[[Any], None]:
    """The hot path: the same schema compiled to straight-line Python (tracker/schema_compiler.py,
    which says why it is not fastjsonschema). Raises schema_compiler.Invalid, without a reason."""
    return compile_schema(spec()["components"]["schemas"][schema_name], spec()["components"])


# The identifier patterns (Id, Name): a length and "no control character". The length is also
# in minLength/maxLength beside them; only the character class needs the regex.
_CONTROL_PATTERN = re.compile(r"\^\[\^\\x00-\\x1f\\x7f-\\x9f\]\{1,(\d+)\}\(\?!\[\\s\\S\]\)")


def _without_control_patterns(schema: Any) -> Any:
    """The schema without the identifier patterns that only refuse control characters (kept
    where the pattern says more, as TraceIdValue's does, or the lengths are not beside it)."""
    if isinstance(schema, list):
        return [_without_control_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_control_patterns(v) for k, v in schema.items()}
    match = _CONTROL_PATTERN.fullmatch(out.get("pattern", "")) if isinstance(out.get("pattern"), str) else None
    if match and out.get("minLength", 0) >= 1 and out.get("maxLength") == int(match.group(1)):
        del out["pattern"]
    return out


@cache
def plain_text_validator(schema_name: str) -> Callable[[Any], None]:
    """fast_validator without the control-character regexes: for a message whose bytes show that
    none of its strings can hold a control character (see _plain_text). The regexes were most
    of the validation's time in bench/ingest's profile."""
    components = _without_control_patterns(spec()["components"])
    return compile_schema(components["schemas"][schema_name], components)


def prepare_validators() -> None:
    """Read the spec and compile every event schema now rather than at the first message: a
    consumer that forks its members (TRACKER_CONSUMER_PROCESSES) does it once, before the fork,
    and the members share the result."""
    for schema_name in EVENT_SCHEMAS.values():
        fast_validator(schema_name)
        plain_text_validator(schema_name)
        typed_schema(schema_name)


def _many_brackets(value: bytes) -> bool:
    """Can this message nest deeper than MAX_DEPTH? Counting brackets is C; only a message with
    more of them than MAX_DEPTH can, and one with no nested container (one "{", no "[") is not
    counted at all."""
    return (value.find(b"{", 1) >= 0 or value.find(b"[") >= 0) and value.count(b"[") + value.count(b"{") > MAX_DEPTH


def _plain_text(value: bytes, backslash: int | None = None, ascii: bool | None = None) -> bool:
    """True when no string in this JSON text can contain a control character (U+0000-U+001F,
    U+007F-U+009F): JSON allows them inside strings only escaped (a backslash), U+007F is the
    byte 0x7F and U+0080-U+009F are 0xC2 0x80-0x9F in UTF-8. A message with any escape or any
    of those bytes takes the full validator. ``backslash``: value.find(b"\\"), when known;
    ``ascii``: value.isascii(), when known.

    bytes.find and isascii, not ``in`` and count: ``in`` takes the buffer protocol's way round
    and costs ~220 ns per scan of a bench/ingest message where find costs ~100 and isascii ~50;
    these scans ran for every message (~1.9 µs in all before, ~0.3 now)."""
    if backslash is None:
        backslash = value.find(b"\\")
    if ascii is None:
        ascii = value.isascii()
    return backslash < 0 and value.find(b"\x7f") < 0 and (ascii or value.find(b"\xc2") < 0)


@lru_cache(maxsize=1)
def status_api_legacy_names() -> dict[str, str]:
    return dict(spec()["components"]["schemas"]["StatusApiEvent"]["x-legacy-names"])


def parse_message(value: bytes | None, *, max_bytes: int) -> Event | Invalid:
    """Kafka message value -> Event, or Invalid with a reason and a sentence.

    Most messages take the typed path (tracker/typed_events.py: one pass of msgspec, no dict);
    whatever it does not take, the full path below judges, and only the full path says why a
    message is invalid."""
    if value is None:
        return Invalid("null_value", "the message has no value (null); an event is a JSON object")
    if len(value) <= max_bytes and _typed_candidate(value):
        event = _typed_event(value)
        if event is not None:
            return event
    return _parse_dict(value, max_bytes)


def _parse_dict(value: bytes, max_bytes: int) -> Event | Invalid:
    """The full path: the message as a dict, validated by the compiled schema, then normalised."""
    try:
        doc, backslash = _decode(value, max_bytes)
        fmt = detect_format(doc)
        return _normalise(doc, fmt, plain=_plain_text(value, backslash))
    except _Rejected as rejected:
        return rejected.invalid


def encode_document(doc: Any) -> bytes:
    """A decoded JSON document (an HTTP body, a CLI argument) as the bytes a producer sends.

    The HTTP and CLI paths validate these bytes with parse_message, so they judge an
    event exactly as the consumer will: Python's json keeps what a lenient parser let in
    (integers of any size, lone surrogates, NaN) and parse_message then decides.
    """
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode(value: bytes, max_bytes: int) -> tuple[dict, int]:
    """The message as a dict, and where its first backslash is (-1: no escapes at all)."""
    if len(value) > max_bytes:
        raise _Rejected("too_large", f"the message is {len(value)} bytes; the limit is {max_bytes}")
    try:
        doc = orjson.loads(value)  # checks UTF-8 as it reads
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise _Rejected("not_utf8", f"the message is not UTF-8 ({utf8.reason} at byte {utf8.start})") from None
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise _Rejected("too_deep", f"the message nests deeper than {MAX_DEPTH} levels") from None
        raise _Rejected("not_json", f"the message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Rejected("not_object", f"an event must be a JSON object, got {type(doc).__name__}")
    if _many_brackets(value) and _depth(doc) > MAX_DEPTH:
        raise _Rejected("too_deep", f"the message nests deeper than {MAX_DEPTH} levels")
    # PostgreSQL text and jsonb cannot hold U+0000. In free-form content (bodies, messages,
    # tracebacks) it becomes U+FFFD, the replacement character, rather than costing the
    # event; in identifiers and times it is refused (nul_character), since a changed id
    # would name another trace.
    backslash = value.find(b"\\")
    if backslash >= 0 and value.find(b"\\u0000", backslash) >= 0 and _has_nul(doc):
        doc = _replace_nul(doc)
    # A null field means "not given" in both ancestors' producers.
    if None in doc.values():
        return {k: v for k, v in doc.items() if v is not None}, backslash
    return doc, backslash


def _depth(value: Any, limit: int = MAX_DEPTH + 1) -> int:
    """Nesting depth, iteratively, stopping once past ``limit``."""
    depth, level = 0, [value]
    while level and depth <= limit:
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        if not nxt:
            break
        depth += 1
        level = nxt
    return depth


# Top-level fields (modern and legacy names) that identify or time an event: never rewritten.
_IDENTIFYING = frozenset(
    {
        "trace_id",
        "request_id",
        "id",
        "event_id",
        "trace_event_id",
        "service",
        "status",
        "trace_event_status",
        "source",
        "account",
        "org_id",
        "inventory_id",
        "system_id",
        "domain",
        "domain_id",
        "application",
        "application_id",
        "user",
        "operation",
        "component",
        "handler",
        "timestamp",
        "date",
        "start_time",
        "end_time",
        "date_started",
        "date_end",
        "trace_status",
        "run_status",
    }
)


def _replace_nul(doc: dict) -> dict:
    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return item.replace("\x00", "\ufffd")
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, list):
            return [clean(v) for v in item]
        return item

    for key, item in doc.items():
        if key in _IDENTIFYING and isinstance(item, str) and "\x00" in item:
            raise _Rejected(
                "nul_character", f"{key}: contains the character U+0000, which no identifier or time can contain"
            )
    return {clean(k): (v if k in _IDENTIFYING else clean(v)) for k, v in doc.items()}


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def detect_format(doc: dict) -> str:
    if "service" in doc:
        return "tracker" if "trace_id" in doc else "payload_tracker"
    return "status_api"


def _validate(doc: dict, schema_name: str, plain: bool = False) -> None:
    try:
        (plain_text_validator if plain else fast_validator)(schema_name)(doc)
        return
    except SchemaInvalid:
        errors = sorted(validator(schema_name).iter_errors(doc), key=lambda e: (list(e.path), e.validator))
        if not errors:  # the two validators disagree (a bug: tests/test_events.py checks they agree); refuse
            raise _Rejected(
                "invalid_value",
                f"not a valid {schema_name} (the fast validator refused it, the reference one did not: please report)",
            ) from None
    first = errors[0]
    reason = {"required": "missing_field", "type": "wrong_type", "maxLength": "too_long", "maxItems": "too_long"}.get(
        first.validator, "invalid_value"
    )
    if first.validator == "pattern" and isinstance(first.instance, str) and "\x00" in first.instance:
        reason = "nul_character"
    if first.validator == "anyOf" and all(c.validator == "required" for c in first.context or ()):
        reason = "missing_field"
    detail = "; ".join(describe_error(e) for e in errors[:10])
    raise _Rejected(reason, f"not a valid {schema_name}: {detail}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def describe_error(error: jsonschema.ValidationError) -> str:
    """One violation in words a producer can act on (the API's request bodies use it too)."""
    where = ".".join(str(p) for p in error.path) or "the event"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "anyOf" and all(c.validator == "required" for c in error.context or ()):
        fields = sorted({field for c in error.context for field in c.validator_value})
        return f"{where}: needs at least one of {', '.join(fields)}"
    if error.validator == "pattern":
        if isinstance(error.instance, str) and _CONTROL.search(error.instance):
            return f"{where}: {error.instance[:80]!r} contains a control character, not allowed in identifiers"
        return f"{where}: {error.instance[:80]!r} is not allowed here"
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    return f"{where}: {message}"


# The schema of each format, by what detect_format answers.
EVENT_SCHEMAS = {"tracker": "TrackerEvent", "payload_tracker": "PayloadTrackerMessage", "status_api": "StatusApiEvent"}


def _normalise(doc: dict, fmt: str, *, plain: bool = False) -> Event:
    if fmt == "status_api":
        # Renaming only when a legacy name is there: a set intersection in C, where the
        # renaming loop is Python (this runs for every message).
        if status_api_legacy_names().keys() & doc.keys():
            doc = _rename_legacy(doc)
        _validate(doc, "StatusApiEvent", plain)
        return _from_status_api(doc)
    if fmt == "payload_tracker":
        _validate(doc, "PayloadTrackerMessage", plain)
        return _from_payload_tracker(doc)
    _validate(doc, "TrackerEvent", plain)
    return _from_tracker(doc)


def derive_event_id(doc: dict) -> str:
    """Same content -> same id, so a redelivered message is the same event.

    Exactly uuid.uuid5(EVENT_ID_NAMESPACE, canonical JSON) — ids already stored depend
    on it — computed without the UUID object and the str/bytes round trip: a third of
    the time, on the hot path of every message that carries no id of its own."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def rename_legacy(doc: dict) -> dict | Invalid:
    """A Status API event with its legacy names replaced by the modern ones, or why not."""
    try:
        return _rename_legacy(doc)
    except _Rejected as exc:
        return exc.invalid


def _rename_legacy(doc: dict) -> dict:
    legacy = status_api_legacy_names()
    out: dict = {}
    given_as: dict[str, str] = {}
    for key, value in doc.items():
        name = legacy.get(key, key)
        if name in out and out[name] != value:
            old, new = sorted((given_as[name], key))
            raise _Rejected(
                "conflicting_fields",
                f"{old!r} and {new!r} both name {name!r} (one is its legacy name) "
                "but have different values; send one of them",
            )
        out[name] = value
        given_as[name] = key
    return out


def parse_time(value: str, field: str) -> datetime:
    try:
        # Naive times are UTC, as in both ancestors.
        return times.parse_time(value)
    except (ValueError, OverflowError):
        raise _Rejected(
            "invalid_value", f"{field}: {value!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)"
        ) from None


def _error_messages(errors: list | None) -> tuple[str, ...]:
    out = []
    for item in errors or ():
        message = item["message"] if isinstance(item, dict) else item
        if isinstance(message, dict):
            # Status API errors are translated: prefer English, else the first language.
            message = message.get("en") or next(iter(message.values()), "")
        if message:
            out.append(message)
    return tuple(out)


def _exception_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


class _Lowered(dict):
    """Service and status names, lower-cased once each: the Events of a batch then share one
    string per name instead of holding a copy each (a consumer holds ~10,000 Events in flight).
    A hit is a dict lookup in C; bounded: a producer that sends ever-new names fills it once and
    is lower-cased per event."""

    def __missing__(self, value: str) -> str:
        out = value.lower()
        if len(self) < 4096:
            self[value] = out
        return out


_LOWERED = _Lowered()


def _json(value: Any) -> orjson.Fragment | None:
    """A free-form field (body, meta) as its JSON text, ready for the jsonb column: the same
    serialisation the COPY made of the parsed value, done here so that the Event in flight holds
    its text instead of the dicts, lists and strings (0.3 vs 0.8 kB per bench/ingest body).

    Copied to a bytes object of its own size: orjson.dumps returns its ~4 kB output buffer
    without shrinking it, and kept, 10,000 bodies took 39 MiB instead of 3 (scratch RSS)."""
    return None if value is None else orjson.Fragment(bytes(memoryview(orjson.dumps(value))))


def _event_id(doc: dict, given: str | None) -> str:
    return given or derive_event_id(doc)


# Each builds the Event as one tuple, every field given in the order of Event's fields (named
# on each line): a keyword call to a NamedTuple of 26 fields takes ~2 µs in CPython 3.11, the
# tuple ~0.4 µs, and this runs for every message (bench/ingest's profile). test_events.py
# checks every field of each format.
_new_event = tuple.__new__


def _from_tracker(doc: dict) -> Event:
    status = _LOWERED[doc["status"]]
    get = doc.get
    return _new_event(
        Event,
        (
            _event_id(doc, get("event_id")),  # event_id
            doc["trace_id"],  # trace_id
            _LOWERED[doc["service"]],  # service
            status,  # status
            status in ERROR_STATUSES,  # failed
            parse_time(doc["timestamp"], "timestamp"),  # timestamp
            get("trace_status", "").upper() or None,  # trace_status
            parse_time(doc["start_time"], "start_time") if "start_time" in doc else None,  # start_time
            parse_time(doc["end_time"], "end_time") if "end_time" in doc else None,  # end_time
            get("duration_ms"),  # duration_ms
            _lower(get("source")),  # source
            get("account"),
            get("org_id"),
            get("inventory_id"),
            get("system_id"),  # account .. system_id
            get("domain"),
            get("domain_id"),
            get("user"),
            get("operation"),  # domain .. operation
            get("path"),
            get("message"),  # path, message
            _error_messages(get("errors")),  # errors
            _exception_text(get("exception")),  # exception
            _json(get("meta")),
            _json(get("body")),  # meta, body
            "tracker",  # format
        ),
    )


def _from_payload_tracker(doc: dict) -> Event:
    status = _LOWERED[doc["status"]]
    get = doc.get
    return _new_event(
        Event,
        (
            derive_event_id(doc),  # event_id
            doc["request_id"],  # trace_id
            _LOWERED[doc["service"]],  # service
            status,  # status
            status in ERROR_STATUSES,  # failed
            parse_time(doc["date"], "date"),  # timestamp
            None,
            None,
            None,
            None,  # trace_status .. duration_ms
            _lower(get("source")),  # source
            get("account"),
            get("org_id"),
            get("inventory_id"),
            get("system_id"),  # account .. system_id
            None,
            None,
            None,
            None,
            None,  # domain .. path
            get("status_msg"),  # message
            (),
            None,
            None,
            None,  # errors .. body
            "payload_tracker",  # format
        ),
    )


def _from_status_api(doc: dict) -> Event:
    start = parse_time(doc["start_time"], "start_time") if "start_time" in doc else None
    end = parse_time(doc["end_time"], "end_time") if "end_time" in doc else None
    if start is None and end is None:
        raise _Rejected("missing_field", "a Status API event needs end_time or start_time (its time)")
    get = doc.get
    duration = get("duration")
    if duration is None and start is not None and end is not None:
        duration = (end - start).total_seconds() * 1000
    status = "error" if doc["trace_event_status"].upper() == "FAILED" else "success"
    return _new_event(
        Event,
        (
            _event_id(doc, get("trace_event_id")),  # event_id
            doc["trace_id"],  # trace_id
            _LOWERED[doc["component"]],  # service
            status,  # status
            status in ERROR_STATUSES,  # failed
            # The event happened when the step ended; a step still running is dated by its start.
            end or start,  # timestamp
            get("trace_status", "").upper() or None,  # trace_status
            start,
            end,
            duration,  # start_time, end_time, duration_ms
            None,
            None,
            None,
            None,
            None,  # source .. system_id
            get("domain"),
            get("domain_id"),
            get("user"),
            get("operation"),  # domain .. operation
            get("s3_path"),  # path
            None,  # message
            _error_messages(get("errors")),  # errors
            _exception_text(get("exception")),  # exception
            _json(get("meta")),
            _json(get("status_body")),  # meta, body
            "status_api",  # format
        ),
    )


# The typed path (tracker/typed_events.py): parse_message's common case.

TRACE_ID_PLACEHOLDERS = frozenset({"-1", "None", "null"})  # what TraceIdValue's pattern refuses
_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE_BYTES)


@cache
def typed_schema(schema_name: str) -> TypedSchema:
    typed = TypedSchema(schema_name)
    if schema_name == "PayloadTrackerMessage" and not typed.flat:
        # Its messages carry no id: _typed_payload_tracker derives it from the struct's JSON.
        raise SchemaNotTyped(f"{schema_name} is no longer all strings; derive its ids from the dict")
    return typed


def _typed_candidate(value: bytes) -> bool:
    """Can the typed path judge this message exactly? Not when it has an escape anywhere or a
    control character (_plain_text: then no string can hold a quote, a backslash or a control
    character, the identifier patterns have nothing to refuse, and a flat message's strings
    encode to their own bytes); not when it is not UTF-8 (msgspec does not check the text of
    the free-form fields it keeps as sent); not when it may nest too deep (more brackets than
    MAX_DEPTH, as _decode counts them)."""
    ascii = value.isascii()
    if not _plain_text(value, ascii=ascii):
        return False
    if not ascii:
        try:
            value.decode()
        except UnicodeDecodeError:
            return False
    return not _many_brackets(value)


def _typed_event(value: bytes) -> Event | None:
    """The Event, or None: the full path decides. The format by the names in the message's
    bytes, as detect_format does by its keys: a plain message's strings hold no quote, so
    '"service"' is either that key or a value "service" (then the struct finds the key
    missing, or unknown, and refuses)."""
    try:
        if value.find(b'"service"') < 0:
            return _typed_status_api(typed_schema("StatusApiEvent").decode(value))
        if value.find(b'"trace_id"') < 0:
            return _typed_payload_tracker(typed_schema("PayloadTrackerMessage").decode(value))
        return _typed_tracker(typed_schema("TrackerEvent").decode(value))
    except (*NOT_TYPED, ValueError, OverflowError):  # ValueError, OverflowError: a time
        return None


# Each builds the same Event as _from_tracker, _from_payload_tracker and _from_status_api do
# from the dict (tests/test_events.py compares them on generated messages), from the struct.


def _typed_tracker(m: Any) -> Event | None:
    if m.event_id is None or m.trace_id in TRACE_ID_PLACEHOLDERS or not is_object(m.meta):
        return None  # no id: derived from the whole message, which the full path has
    status = _LOWERED[m.status]
    return _new_event(
        Event,
        (
            m.event_id,
            m.trace_id,
            _LOWERED[m.service],
            status,
            status in ERROR_STATUSES,
            times.parse_time(m.timestamp),
            m.trace_status.upper() if m.trace_status else None,
            None if m.start_time is None else times.parse_time(m.start_time),
            None if m.end_time is None else times.parse_time(m.end_time),
            m.duration_ms,
            _lower(m.source),
            m.account,
            m.org_id,
            m.inventory_id,
            m.system_id,
            m.domain,
            m.domain_id,
            m.user,
            m.operation,
            m.path,
            m.message,
            _error_messages(m.errors),
            m.exception,
            typed_text(m.meta),
            typed_text(m.body),
            "tracker",
        ),
    )


def _typed_payload_tracker(m: Any) -> Event | None:
    if m.request_id in TRACE_ID_PLACEHOLDERS:
        return None
    status = _LOWERED[m.status]
    return _new_event(
        Event,
        (
            canonical_event_id(m, _NAMESPACE_SHA1),  # a flat schema: its struct is its canonical JSON
            m.request_id,
            _LOWERED[m.service],
            status,
            status in ERROR_STATUSES,
            times.parse_time(m.date),
            None,
            None,
            None,
            None,
            _lower(m.source),
            m.account,
            m.org_id,
            m.inventory_id,
            m.system_id,
            None,
            None,
            None,
            None,
            None,
            m.status_msg,
            (),
            None,
            None,
            None,
            "payload_tracker",
        ),
    )


def _typed_status_api(m: Any) -> Event | None:
    if m.trace_event_id is None or m.trace_id in TRACE_ID_PLACEHOLDERS or not is_object(m.meta):
        return None
    start = None if m.start_time is None else times.parse_time(m.start_time)
    end = None if m.end_time is None else times.parse_time(m.end_time)
    if start is None and end is None:
        return None  # missing_field: the full path says so
    duration = m.duration
    if duration is None and start is not None and end is not None:
        duration = (end - start).total_seconds() * 1000
    status = "error" if m.trace_event_status.upper() == "FAILED" else "success"
    return _new_event(
        Event,
        (
            m.trace_event_id,
            m.trace_id,
            _LOWERED[m.component],
            status,
            status in ERROR_STATUSES,
            end or start,
            m.trace_status.upper() if m.trace_status else None,
            start,
            end,
            duration,
            None,
            None,
            None,
            None,
            None,
            m.domain,
            m.domain_id,
            m.user,
            m.operation,
            m.s3_path,
            None,
            _error_messages(m.errors),
            m.exception,
            typed_text(m.meta),
            typed_text(m.status_body),
            "status_api",
        ),
    )
