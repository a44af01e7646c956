"""Turning Kafka messages into events: both ancestors' formats, legacy names, and every way to be invalid."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.events import EVENT_ID_NAMESPACE, REASONS, Event, Invalid, derive_event_id, parse_message


def value(fragment: orjson.Fragment | None):
    """The value of a free-form field: an Event carries it as JSON text (an orjson.Fragment)."""
    return None if fragment is None else orjson.loads(orjson.dumps(fragment))


def with_values(event: Event | Invalid) -> dict[str, Any]:
    """An event's fields, its free-form ones as values."""
    assert isinstance(event, Event), event
    return dict(event._asdict(), meta=value(event.meta), body=value(event.body))


def as_values(**fields: Any) -> dict[str, Any]:
    """The event expected, in with_values' form."""
    return dict(Event(**{**fields, "meta": None, "body": None})._asdict(), meta=fields["meta"], body=fields["body"])


MAX = 1024 * 1024


def parse(doc) -> Event | Invalid:
    return parse_message(json.dumps(doc).encode(), max_bytes=MAX)


def parse_valid(doc) -> Event:
    event = parse(doc)
    assert isinstance(event, Event), event
    return event


def test_payload_tracker_message_is_normalised():
    event = parse(
        {
            "service": "Ingress",
            "source": "Inventory",
            "account": "000001",
            "org_id": "42",
            "request_id": "req-1",
            "inventory_id": "inv",
            "system_id": "sys",
            "status": "Received",
            "status_msg": "got it",
            "date": "2024-05-01T12:00:00.123456+02:00",
        }
    )
    assert isinstance(event, Event)
    assert (event.trace_id, event.service, event.source, event.status) == ("req-1", "ingress", "inventory", "received")
    assert (event.account, event.org_id, event.inventory_id, event.system_id) == ("000001", "42", "inv", "sys")
    assert event.message == "got it"
    assert event.timestamp == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.format == "payload_tracker" and not event.failed


def test_status_api_event_is_normalised():
    event = parse(
        {
            "trace_id": "t1",
            "trace_event_id": "e1",
            "domain": "ds",
            "domain_id": "7",
            "start_time": "2024-05-01T12:00:00Z",
            "end_time": "2024-05-01T12:00:02.5Z",
            "trace_status": "FINISHED",
            "trace_event_status": "FAILED",
            "user": "ola",
            "component": "Copy",
            "operation": "copy_files",
            "status_body": {"files_incoming": ["a"], "files_outgoing": []},
            "meta": {"git_rev": "abc"},
            "s3_path": "s3://b/k",
            "exception": "Traceback ...",
            "errors": [{"message": {"nb": "feil", "en": "failure"}}],
        }
    )
    assert isinstance(event, Event)
    assert (event.event_id, event.trace_id, event.service, event.status, event.failed) == (
        "e1",
        "t1",
        "copy",
        "error",
        True,
    )
    assert event.trace_status == "FINISHED"
    assert event.timestamp == datetime(2024, 5, 1, 12, 0, 2, 500000, tzinfo=UTC)  # the end time
    assert event.duration_ms == 2500
    assert value(event.body) == {"files_incoming": ["a"], "files_outgoing": []}
    assert (event.path, event.user, event.operation, value(event.meta)) == (
        "s3://b/k",
        "ola",
        "copy_files",
        {"git_rev": "abc"},
    )
    assert event.errors == ("failure",)
    assert event.exception == "Traceback ..."


def test_each_format_fills_every_field_of_the_event_and_nothing_else():
    """Every field, compared whole: the builders write the Event as a positional tuple (for
    speed), so a field in the wrong place must show here."""
    at = datetime(2024, 5, 1, 12, 0, 2, 500000, tzinfo=UTC)
    start = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    tracker = parse(
        {
            "event_id": "e",
            "trace_id": "t",
            "service": "S",
            "status": "Failed",
            "timestamp": at.isoformat(),
            "trace_status": "finished",
            "start_time": start.isoformat(),
            "end_time": at.isoformat(),
            "duration_ms": 2.5,
            "source": "Src",
            "account": "a",
            "org_id": "o",
            "inventory_id": "i",
            "system_id": "y",
            "domain": "d",
            "domain_id": "di",
            "user": "u",
            "operation": "op",
            "path": "p",
            "message": "m",
            "errors": ["x"],
            "exception": {"type": "E"},
            "meta": {"k": 1},
            "body": [1],
        }
    )
    assert with_values(tracker) == as_values(
        event_id="e",
        trace_id="t",
        service="s",
        status="failed",
        failed=True,
        timestamp=at,
        trace_status="FINISHED",
        start_time=start,
        end_time=at,
        duration_ms=2.5,
        source="src",
        account="a",
        org_id="o",
        inventory_id="i",
        system_id="y",
        domain="d",
        domain_id="di",
        user="u",
        operation="op",
        path="p",
        message="m",
        errors=("x",),
        exception='{"type": "E"}',
        meta={"k": 1},
        body=[1],
        format="tracker",
    )
    payload = {
        "service": "S",
        "source": "Src",
        "account": "a",
        "org_id": "o",
        "request_id": "t",
        "inventory_id": "i",
        "system_id": "y",
        "status": "Received",
        "status_msg": "m",
        "date": at.isoformat(),
    }
    assert parse(payload) == Event(
        event_id=derive_event_id(payload),
        trace_id="t",
        service="s",
        status="received",
        failed=False,
        timestamp=at,
        source="src",
        account="a",
        org_id="o",
        inventory_id="i",
        system_id="y",
        message="m",
        format="payload_tracker",
    )
    status_api = parse(
        {
            "trace_id": "t",
            "trace_event_id": "e",
            "domain": "d",
            "domain_id": "di",
            "start_time": start.isoformat(),
            "end_time": at.isoformat(),
            "trace_status": "started",
            "trace_event_status": "OK",
            "user": "u",
            "component": "C",
            "operation": "op",
            "status_body": {"b": 1},
            "meta": {"k": 1},
            "s3_path": "p",
            "duration": 7,
            "exception": "tb",
            "errors": [{"message": "x"}],
        }
    )
    assert with_values(status_api) == as_values(
        event_id="e",
        trace_id="t",
        service="c",
        status="success",
        failed=False,
        timestamp=at,
        trace_status="STARTED",
        start_time=start,
        end_time=at,
        duration_ms=7,
        domain="d",
        domain_id="di",
        user="u",
        operation="op",
        path="p",
        errors=("x",),
        exception="tb",
        meta={"k": 1},
        body={"b": 1},
        format="status_api",
    )


def test_status_api_legacy_names_are_mapped():
    legacy = parse(
        {
            "id": "t1",
            "event_id": "e1",
            "application": "ds",
            "application_id": "7",
            "date_started": "2024-05-01T12:00:00",
            "date_end": "2024-05-01T12:00:01",
            "handler": "copy",
            "run_status": "started",
            "status": "ok",
            "s3path": "s3://x",
            "body": {"k": 1},
        }
    )
    modern = parse(
        {
            "trace_id": "t1",
            "trace_event_id": "e1",
            "domain": "ds",
            "domain_id": "7",
            "start_time": "2024-05-01T12:00:00",
            "end_time": "2024-05-01T12:00:01",
            "component": "copy",
            "trace_status": "STARTED",
            "trace_event_status": "OK",
            "s3_path": "s3://x",
            "status_body": {"k": 1},
        }
    )
    assert isinstance(legacy, Event) and with_values(legacy) == with_values(modern)
    assert legacy.trace_status == "STARTED" and legacy.status == "success"


def test_legacy_and_modern_name_with_different_values_is_rejected():
    result = parse(
        {
            "id": "t1",
            "trace_id": "t2",
            "component": "copy",
            "trace_event_status": "OK",
            "end_time": "2024-05-01T12:00:00Z",
        }
    )
    assert isinstance(result, Invalid) and result.reason == "conflicting_fields", result
    assert "'id'" in result.detail and "'trace_id'" in result.detail


def test_canonical_event_is_accepted():
    event = parse(
        {
            "trace_id": "t",
            "service": "s",
            "status": "processing",
            "timestamp": "2024-01-01T00:00:00Z",
            "event_id": "x",
            "body": [1, 2],
        }
    )
    assert isinstance(event, Event) and event.format == "tracker" and value(event.body) == [1, 2]


def test_naive_times_are_utc():
    event = parse_valid({"service": "s", "request_id": "r", "status": "received", "date": "2024-01-01 10:00:00"})
    assert event.timestamp == datetime(2024, 1, 1, 10, tzinfo=UTC)


def test_missing_event_id_is_derived_from_content_and_stable():
    doc = {"service": "s", "request_id": "r", "status": "received", "date": "2024-01-01T10:00:00"}
    first = parse_valid(doc)
    reordered = parse_valid(dict(reversed(list(doc.items()))))
    other = parse_valid({**doc, "status": "success"})
    assert first.event_id == reordered.event_id != other.event_id


def test_null_fields_count_as_absent():
    event = parse(
        {
            "service": "s",
            "request_id": "r",
            "status": "received",
            "date": "2024-01-01T10:00:00",
            "inventory_id": None,
            "account": None,
        }
    )
    assert isinstance(event, Event) and event.inventory_id is None


def test_u0000_in_free_form_content_becomes_the_replacement_character_instead_of_costing_the_event():
    doc = {
        "trace_id": "t",
        "service": "s",
        "status": "error",
        "timestamp": "2024-01-01T00:00:00Z",
        "message": "bad\x00byte",
        "body": {"k\x00": ["v\x00"]},
        "meta": {"\x00": 1},
    }
    event = parse_message(json.dumps(doc).encode(), max_bytes=MAX)
    assert isinstance(event, Event)
    assert event.message == "bad\ufffdbyte" and value(event.body) == {"k\ufffd": ["v\ufffd"]}
    assert value(event.meta) == {"\ufffd": 1}


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "null_value"),
        (b"\xff\xfe not utf-8", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (('{"a": ' + "[" * 40 + "1" + "]" * 40 + "}").encode(), "too_deep"),
        (b"{}", "missing_field"),
        (json.dumps({"service": "s", "request_id": "r", "status": "received"}).encode(), "missing_field"),
        (json.dumps({"service": 5, "request_id": "r", "status": "x", "date": "2024-01-01"}).encode(), "wrong_type"),
        (
            json.dumps({"service": "s", "request_id": "r" * 257, "status": "x", "date": "2024-01-01"}).encode(),
            "too_long",
        ),
        (
            json.dumps({"service": "s", "request_id": "-1", "status": "x", "date": "2024-01-01"}).encode(),
            "invalid_value",
        ),
        (json.dumps({"service": "s", "request_id": "r", "status": "x", "date": "yesterday"}).encode(), "invalid_value"),
        (
            json.dumps(
                {"trace_id": "t", "component": "c", "trace_event_status": "MAYBE", "end_time": "2024-01-01"}
            ).encode(),
            "invalid_value",
        ),
        (json.dumps({"trace_id": "t", "component": "c", "trace_event_status": "OK"}).encode(), "missing_field"),
        (
            json.dumps({"service": "s", "request_id": "r\x00", "status": "x", "date": "2024-01-01"}).encode(),
            "nul_character",
        ),
        (
            json.dumps({"trace_id": "t", "service": "s\x00", "status": "x", "timestamp": "2024-01-01"}).encode(),
            "nul_character",
        ),
        (
            json.dumps({"trace_id": "t", "service": "s", "status": "x", "timestamp": "2024-01\x00-01"}).encode(),
            "nul_character",
        ),
    ],
)
def test_invalid_messages_get_a_reason_and_a_sentence(value, reason):
    result = parse_message(value, max_bytes=MAX)
    assert isinstance(result, Invalid)
    assert result.reason == reason
    assert len(result.detail) > 10


def test_message_over_the_size_bound_is_rejected_before_parsing():
    value = json.dumps(
        {"service": "s", "request_id": "r", "status": "x", "date": "2024-01-01", "status_msg": "x" * 2000}
    ).encode()
    result = parse_message(value, max_bytes=1000)
    assert isinstance(result, Invalid) and result.reason == "too_large" and "1000" in result.detail


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["service", "request_id", "status", "date", "trace_id", "component", "id", "x"]),
                    children,
                    max_size=5,
                )
            ),
            max_leaves=20,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_input_yields_an_event_or_a_known_reason(value):
    result = parse_message(value, max_bytes=MAX)
    assert isinstance(result, (Event, Invalid))
    if isinstance(result, Invalid):
        assert result.reason in REASONS


def test_documents_a_lenient_parser_let_in_are_judged_like_kafka_messages():
    """HTTP bodies are decoded by Python's json, which accepts lone surrogates, NaN and
    integers of any size; encode_document + parse_message judge them as the consumer will."""
    from tracker.events import encode_document

    base = {"trace_id": "t", "service": "s", "status": "x", "timestamp": "2024-01-01"}
    lone = parse_message(encode_document({**base, "trace_id": "t\udb1c"}), max_bytes=MAX)
    assert isinstance(lone, Invalid) and lone.reason == "not_json"
    nan = parse_message(encode_document({**base, "body": float("nan")}), max_bytes=MAX)
    assert isinstance(nan, Invalid) and nan.reason == "not_json"
    huge = parse_message(encode_document({**base, "body": 10**30}), max_bytes=MAX)
    assert isinstance(huge, Event) and value(huge.body) == 1e30


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        ),
    )
)
def test_derived_event_ids_are_exactly_uuid5_of_the_canonical_json(doc):
    # Ids already stored were made by uuid.uuid5: a redelivered old message must get the same id.
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
    assert derive_event_id(doc) == str(uuid.uuid5(EVENT_ID_NAMESPACE, canonical))


_VALID = {
    "TrackerEvent": {"trace_id": "t", "service": "s", "status": "ok", "timestamp": "2024-05-01T12:00:00Z"},
    "PayloadTrackerMessage": {"request_id": "t", "service": "s", "status": "ok", "date": "2024-05-01T12:00:00Z"},
    "StatusApiEvent": {
        "trace_id": "t",
        "component": "c",
        "trace_event_status": "OK",
        "end_time": "2024-05-01T12:00:00Z",
    },
}
_STRING_FIELDS = {
    "TrackerEvent": (
        "trace_id",
        "service",
        "status",
        "event_id",
        "source",
        "account",
        "domain",
        "user",
        "operation",
        "path",
        "message",
        "timestamp",
    ),
    "PayloadTrackerMessage": ("request_id", "service", "status", "source", "account", "org_id", "status_msg", "date"),
    "StatusApiEvent": (
        "trace_id",
        "component",
        "trace_event_id",
        "domain",
        "domain_id",
        "user",
        "operation",
        "s3_path",
        "end_time",
    ),
}


def _verdict(validate, doc) -> str:
    from tracker.schema_compiler import Invalid as SchemaInvalid

    try:
        validate(doc)
        return "valid"
    except SchemaInvalid:
        return "invalid"


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    schema=st.sampled_from(sorted(_VALID)),
    value=st.one_of(st.text(max_size=300), st.sampled_from(["", "-1", "None", "null", "x" * 129, "x" * 257])),
)
def test_plain_text_messages_get_the_same_verdict_from_the_validator_without_regexes(data, schema, value):
    """The identifier regexes only refuse control characters; a message whose bytes cannot hold
    one is validated without them. Both validators agree on every such message: a valid event
    with one of its fields replaced by an arbitrary string."""
    from hypothesis import assume

    from tracker.events import _plain_text, fast_validator, plain_text_validator

    doc = {**_VALID[schema], data.draw(st.sampled_from(_STRING_FIELDS[schema])): value}
    assume(_plain_text(json.dumps(doc, ensure_ascii=False).encode()))
    assert _verdict(fast_validator(schema), doc) == _verdict(plain_text_validator(schema), doc), (schema, doc)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-2, 2, allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(
        ["", "-1", "null", "OK", "FAILED", "finished", "x" * 129, "x" * 257, "a\x00b", "a\x85b", "x" * 8193]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["message", "en", "nb", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)
_ERRORS = st.lists(
    st.one_of(
        st.text(max_size=3),
        st.just("x" * 8193),
        st.fixed_dictionaries(
            {
                "message": st.one_of(
                    st.text(max_size=3),
                    st.integers(),
                    st.dictionaries(
                        st.sampled_from(["en", "nb"]),
                        st.one_of(st.text(max_size=3), st.integers(), st.just("x" * 8193)),
                        max_size=2,
                    ),
                )
            }
        ),
        st.dictionaries(st.sampled_from(["msg", "message"]), _JSON, max_size=2),
    ),
    max_size=4,
) | st.lists(st.just("e"), min_size=100, max_size=101)


def _edges(schema: dict) -> list:
    """Values at the limits a field's schema sets: each side of every length, count, minimum and
    enum, and error lists whose items are just valid or just not."""
    from tracker.spec import spec

    while "$ref" in schema:
        schema = spec()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    out: list = [None, 0, "x", {"message": "m"}]
    for sub in schema.get("allOf", []) + schema.get("oneOf", []):
        out += _edges(sub)
    for limit in ("minLength", "maxLength"):
        if limit in schema:
            out += ["x" * (schema[limit] + d) for d in (-1, 0, 1) if schema[limit] + d >= 0]
    for choice in schema.get("enum", []):
        out += [choice, choice + " ", choice.swapcase()]
    if "minimum" in schema:
        out += [schema["minimum"] + d for d in (-1, -0.001, 0, 0.001)]
    if "maxItems" in schema:
        out += [["e"] * (schema["maxItems"] + d) for d in (0, 1)]
    if schema.get("type") == "array":
        out += [[{"message": {"en": "m", "nb": v}}] for v in ("m", 5, None, "x" * 8192, "x" * 8193)]
        messages: tuple[Any, ...] = ("x" * 8192, "x" * 8193, 5, [])
        out += [[{"message": v}] for v in messages] + [[{"msg": "m"}], [5], ["m"]]
    return out


@settings(max_examples=1500, deadline=None)
@given(data=st.data(), schema=st.sampled_from(sorted(_VALID)))
def test_the_compiled_validator_agrees_with_the_reference_validator_on_any_document(data, schema):
    """tracker/schema_compiler.py compiles the event schemas for speed; jsonschema is the
    reference. They must give the same verdict on every document: here a valid event with
    fields removed, and fields (known or not) set to arbitrary JSON, to values at the edges of
    the schema's limits, and to error lists of every shape."""
    from tracker.events import fast_validator, validator
    from tracker.spec import spec

    properties = spec()["components"]["schemas"][schema]["properties"]
    doc = dict(_VALID[schema])
    # Mostly one change at a time: a document wrong in one place only is where a check that
    # is missing or too loose shows.
    if data.draw(st.integers(0, 3)) == 0:
        for field in data.draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
            doc.pop(field, None)
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 4]))):
        field = data.draw(st.sampled_from(sorted(properties) + ["unknown"]))
        edges = st.sampled_from(_edges(properties.get(field, {})))
        doc[field] = data.draw(edges if data.draw(st.integers(0, 2)) else _JSON | _ERRORS)
    expected = "valid" if validator(schema).is_valid(doc) else "invalid"
    assert _verdict(fast_validator(schema), doc) == expected, (schema, doc)
    assert _verdict(fast_validator(schema), [doc]) == "invalid"


def test_the_schema_compiler_refuses_keywords_it_does_not_implement():
    """A schema that needs more than the compiler knows fails loudly, never validates loosely."""
    from tracker.schema_compiler import SchemaNotSupported, compile_schema

    for schema in (
        {"type": "object", "patternProperties": {"a": {}}},
        {"type": "integer"},
        {"type": "string", "not": {"enum": ["x"]}},
        {"items": [{"type": "string"}]},
    ):
        with pytest.raises(SchemaNotSupported):
            compile_schema(schema, {"schemas": {}})


@pytest.mark.parametrize("character", ["\u0085", "\u007f"], ids=["NEL, two UTF-8 bytes", "DEL, one ASCII byte"])
def test_a_raw_control_character_in_an_identifier_is_refused(character):
    """A control character sent as itself, not escaped (U+0085 is two UTF-8 bytes, U+007F one
    ASCII byte): still refused as an identifier, though the message has no backslash."""
    value = '{"trace_id": "t", "service": "a' + character + 'b", "status": "ok", "timestamp": "2024-05-01T12:00:00Z"}'
    result = parse_message(value.encode(), max_bytes=MAX)
    assert isinstance(result, Invalid) and "control character" in result.detail, result


# The typed path (tracker/typed_events.py) against the full path.

_IDS = {"TrackerEvent": "event_id", "PayloadTrackerMessage": None, "StatusApiEvent": "trace_event_id"}
# Times in the forms producers send, and some parse_time refuses.
_TIMES = [
    "2024-05-01T12:00:00Z",
    "2024-05-01 12:00:00.123456",
    "2024-05-01T14:00:00+02:00",
    "2024-05-01t12:00:00z",
    "2024-05-01T23:59:60Z",
    "2024-13-01T12:00:00Z",
    "yesterday",
]


def _full_and_typed(value: bytes) -> tuple[Event | Invalid, Event | None]:
    from tracker.events import _parse_dict, _typed_candidate, _typed_event

    return _parse_dict(value, MAX), (_typed_event(value) if _typed_candidate(value) else None)


@settings(max_examples=1500, deadline=None)
@given(data=st.data(), schema=st.sampled_from(sorted(_VALID)))
def test_whatever_the_typed_path_takes_it_turns_into_the_event_the_full_path_builds(data, schema):
    """The typed path is the consumer's common case; the full path is the definition. On valid
    events with an id or without, fields removed, set to nulls, to arbitrary JSON, to values at
    the edges of the schema's limits, to times of every form, with unknown fields and legacy
    names, sent compact or spaced, ASCII or not: whenever the typed path gives an Event, the
    full path gives the same one (free-form fields compared by value: the typed path keeps the
    producer's text)."""
    from tracker.spec import spec

    properties = spec()["components"]["schemas"][schema]["properties"]
    doc: dict[str, Any] = dict(_VALID[schema])
    id_field = _IDS[schema]
    if id_field and data.draw(st.integers(0, 3)):
        doc[id_field] = data.draw(st.sampled_from([str(uuid.UUID(int=5)), "id-1", "x" * 256, "x" * 257]))
    if data.draw(st.integers(0, 3)) == 0:
        for field in data.draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
            doc.pop(field, None)
    for _ in range(data.draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        field = data.draw(st.sampled_from(sorted(properties) + ["unknown", "id", "handler", "status"]))
        choices = _edges(properties.get(field, {})) + ["-1", "None", "null", "åø ok"]
        if "time" in field or field in ("date", "timestamp"):
            choices += _TIMES
        kind = data.draw(st.integers(0, 4))
        doc[field] = data.draw(
            st.sampled_from(choices) if kind < 3 else _JSON | _ERRORS if kind == 3 else st.text(max_size=8)
        )
    separators = data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    value = json.dumps(doc, ensure_ascii=data.draw(st.booleans()), separators=separators).encode()
    full, typed = _full_and_typed(value)
    if typed is not None:
        assert isinstance(full, Event), (value, full)
        assert with_values(typed) == with_values(full), value


def test_the_typed_path_agrees_with_the_full_path_on_every_single_field_edge():
    """Exhaustive where the test above samples: each field of each format, with an id and
    without, set to each value at the edges of its schema, to the placeholders, to times of
    every form; the typed path must build the full path's Event whenever it takes one, and
    must take a good share of them (else this proves nothing)."""
    from tracker.spec import spec

    taken = total = 0
    for schema, valid in _VALID.items():
        properties = spec()["components"]["schemas"][schema]["properties"]
        id_field = _IDS[schema]
        for with_id in (True, False):
            base: dict[str, Any] = dict(valid)
            if with_id and id_field:
                base[id_field] = "e-1"
            for field in sorted(properties):
                for choice in [*_edges(properties[field]), "-1", "None", "null", "åø ok", "Ok", *_TIMES]:
                    value = json.dumps({**base, field: choice}, ensure_ascii=False).encode()
                    full, typed = _full_and_typed(value)
                    total += 1
                    if typed is not None:
                        taken += 1
                        assert isinstance(full, Event), (value, full)
                        assert with_values(typed) == with_values(full), value
    assert taken > total / 4, (taken, total)


@pytest.mark.parametrize(
    "doc",
    [
        {**_VALID["TrackerEvent"], "event_id": "e-1", "meta": {"a": 1}, "body": [1, {"b": None}], "errors": ["x"]},
        {**_VALID["PayloadTrackerMessage"], "account": "0000001", "status_msg": "å ok", "source": "Inventory"},
        {**_VALID["StatusApiEvent"], "trace_event_id": "e-2", "start_time": "2024-05-01T11:59:59Z", "status_body": {}},
        {**_VALID["StatusApiEvent"], "trace_event_id": "e-3", "duration": 5, "trace_status": "finished", "user": None},
    ],
    ids=["tracker", "payload tracker", "status api", "status api with a null"],
)
def test_common_messages_of_each_format_take_the_typed_path(doc):
    """The typed path is there for speed: it must take the messages producers send most (were
    it never to take them, every test above would still pass)."""
    full, typed = _full_and_typed(json.dumps(doc, ensure_ascii=False).encode())
    assert typed is not None
    assert with_values(typed) == with_values(full)


@pytest.mark.parametrize(
    "value, reason",
    [
        (
            b'{"trace_id": "t", "service": "s", "status": "ok", "timestamp": "2024-05-01T12:00:00Z", '
            b'"event_id": "e", "body": {"k": "\xff"}}',
            "not_utf8",
        ),
        (
            b'{"trace_id": "t", "service": "s", "status": "ok", "timestamp": "2024-05-01T12:00:00Z", '
            b'"event_id": "e", "meta": [1]}',
            "wrong_type",
        ),
        (
            b'{"trace_id": "null", "component": "c", "trace_event_status": "OK", "end_time": "2024-05-01T12:00:00Z", '
            b'"trace_event_id": "e"}',
            "invalid_value",
        ),
        (b'{"trace_id": "t", "component": "c", "trace_event_status": "OK", "trace_event_id": "e"}', "missing_field"),
        (
            b'{"request_id": "t", "service": "s", "status": "ok", "date": "2024-05-01T12:00:00Z", "x": "'
            + b"[" * 40
            + b'"}',
            None,
        ),
    ],
    ids=["bad UTF-8 in a body", "meta not an object", "placeholder trace id", "no time", "brackets in a string"],
)
def test_what_the_typed_path_cannot_judge_goes_to_the_full_path(value, reason):
    """msgspec keeps a free-form field's text unread: its UTF-8 is checked by the candidate test,
    or PostgreSQL would refuse the whole batch. The rest are the checks the builders add."""
    result = parse_message(value, max_bytes=MAX)
    if reason is None:
        assert isinstance(result, Event), result
    else:
        assert isinstance(result, Invalid) and result.reason == reason, result


def test_the_typed_schemas_refuse_keywords_they_cannot_express_exactly():
    from tracker.typed_events import SchemaNotTyped, _type

    for schema in (
        {"type": "integer"},
        {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
        {"type": "object", "properties": {"a": {}}},
        {"oneOf": [{"type": "object"}, {"type": "number"}]},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ):
        with pytest.raises(SchemaNotTyped):
            _type(schema, {"schemas": {}})
