"""The event schemas compiled to straight-line Python: the consumer's validator.

Why our own and not fastjsonschema alone: bench/ingest's profile of the consumer put
fastjsonschema's generated code at ~half of the time spent parsing a message (~8 µs of ~19):
it calls a function per field, builds the field's name ("data.trace_id") for a message it
may never need, and walks the keys through a set. The event schemas use a small subset of
JSON Schema, and for that subset the checks can be written inline: a dict lookup, a type
test and a length per field. This module compiles exactly that subset and refuses
(SchemaNotSupported) any keyword outside it, so a schema change that needs more fails at
import, in the tests, not silently in production.

It only answers valid or not. Why not is the reference validator's job (jsonschema, in
tracker/events.py), asked only for the rare invalid message. The two must agree on every
document: tests/test_events.py checks it against jsonschema on generated documents.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

# What a compiled schema may contain. "format" is accepted and not checked: parse_time checks
# times itself (and takes the ancestors' looser forms), as the fastjsonschema path did.
_KNOWN = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "minimum",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "format",
        # Annotations: no effect on validity.
        "description",
        "example",
        "examples",
        "title",
        "x-legacy-names",
        "default",
    }
)
# Exact types: bool is not a number, as in JSON ("integer" is left out: drafts disagree on 1.0).
_TYPES = {
    "string": "type({v}) is str",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "boolean": "type({v}) is bool",
    "number": "(type({v}) is int or type({v}) is float)",
}


class SchemaNotSupported(ValueError):
    """The schema uses a keyword (or a form of one) this compiler does not implement."""


class Invalid(ValueError):
    """The document does not match the schema. No detail: see the module's docstring."""


def compile_schema(schema: dict, components: dict) -> Callable[[Any], None]:
    """A function that returns None for a valid document and raises Invalid otherwise.

    ``components`` resolves "#/components/schemas/<name>" references. Documents are what a
    JSON parser returns (dict, list, str, int, float, bool, None), as from orjson.loads."""
    return _Compiler(components).build(schema)


class _Compiler:
    def __init__(self, components: dict) -> None:
        self.components = components
        self.names = itertools.count()
        self.constants: dict[str, Any] = {"Invalid": Invalid, "_MISSING": _MISSING}
        self.helpers: list[str] = []

    def build(self, schema: dict) -> Callable[[Any], None]:
        lines = ["def validate(doc):"]
        self.emit(schema, "doc", lines, 1)
        lines.append("    return None")
        source = "\n".join(self.helpers + lines)
        namespace = dict(self.constants)
        exec(compile(source, "<event schema>", "exec"), namespace)  # our own generated code
        validate = namespace["validate"]
        validate.source = source  # for a person debugging it
        return validate

    def constant(self, value: Any) -> str:
        name = f"_c{next(self.names)}"
        self.constants[name] = value
        return name

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            ref = schema["$ref"]
            prefix = "#/components/schemas/"
            if not ref.startswith(prefix) or set(schema) - {"$ref", "description"}:
                raise SchemaNotSupported(f"reference {ref!r} (only a lone #/components/schemas/... is compiled)")
            schema = self.components["schemas"][ref[len(prefix) :]]
        return schema

    def predicate(self, schema: dict) -> str:
        """The name of a helper function that returns True when its argument matches: for the
        branches of anyOf/oneOf, which must answer without raising."""
        name = f"_matches{next(self.names)}"
        lines = [f"def {name}(value):", "    try:"]
        self.emit(schema, "value", lines, 2)
        lines += ["    except Invalid:", "        return False", "    return True", ""]
        self.helpers.extend(lines)
        return name

    def emit(self, schema: dict, v: str, out: list[str], depth: int) -> None:
        schema = self.resolve(schema)
        unknown = set(schema) - _KNOWN
        if unknown:
            raise SchemaNotSupported(f"keywords {sorted(unknown)}")
        pad = "    " * depth
        fail = f"{pad}    raise Invalid()"

        kind = schema.get("type")
        if kind is not None:
            if kind not in _TYPES:
                raise SchemaNotSupported(f"type {kind!r}")
            out += [f"{pad}if not {_TYPES[kind].format(v=v)}:", fail]
        # Without a type, a keyword applies only to the values of its kind (JSON Schema's rule).
        strings, objects, arrays = (kind in (None, t) for t in ("string", "object", "array"))
        numbers = kind in (None, "number")

        if "enum" in schema:
            # == as JSON means it: 1 is not true, and 1.0 is 1 (the values here are strings).
            values = schema["enum"]
            if not all(type(x) is str for x in values):
                raise SchemaNotSupported("enum of non-strings")
            out += [f"{pad}if not (type({v}) is str and {v} in {self.constant(frozenset(values))}):", fail]

        length = [f"len({v}) < {schema['minLength']}"] if "minLength" in schema else []
        length += [f"len({v}) > {schema['maxLength']}"] if "maxLength" in schema else []
        pattern = schema.get("pattern")
        if (length or pattern) and strings:
            guard = "" if kind == "string" else f"type({v}) is str and "
            if length:
                out += [f"{pad}if {guard}({' or '.join(length)}):", fail]
            if pattern:
                # JSON Schema's pattern is unanchored: re.search, as the reference validator does.
                regex = self.constant(re.compile(pattern).search)
                out += [f"{pad}if {guard}{regex}({v}) is None:", fail]

        if "minimum" in schema and numbers:
            guard = "" if kind == "number" else f"(type({v}) is int or type({v}) is float) and "
            out += [f"{pad}if {guard}{v} < {schema['minimum']!r}:", fail]

        if arrays and ("items" in schema or "maxItems" in schema):
            guard = "" if kind == "array" else f"type({v}) is list and "
            if "maxItems" in schema:
                out += [f"{pad}if {guard}len({v}) > {schema['maxItems']}:", fail]
            if "items" in schema:
                if not isinstance(schema["items"], dict):
                    raise SchemaNotSupported("items as a list (tuple validation)")
                item = f"_i{next(self.names)}"
                body: list[str] = []
                self.emit(schema["items"], item, body, depth + 2 if guard else depth + 1)
                if not body:
                    pass  # items: {} (anything)
                elif guard:
                    out += [f"{pad}if {guard[:-5]}:", f"{pad}    for {item} in {v}:"] + body
                else:
                    out += [f"{pad}for {item} in {v}:"] + body

        if objects and ("properties" in schema or "required" in schema or "additionalProperties" in schema):
            inner, body = (pad, out) if kind == "object" else (pad + "    ", [])
            for field in schema.get("required", ()):
                body += [f"{inner}if {field!r} not in {v}:", f"{inner}    raise Invalid()"]
            properties = schema.get("properties", {})
            for field, sub in properties.items():
                sub_lines: list[str] = []
                value = f"_v{next(self.names)}"
                self.emit(sub, value, sub_lines, len(inner) // 4 + 1)
                if sub_lines:  # {} (anything) needs no code
                    body += [f"{inner}{value} = {v}.get({field!r}, _MISSING)", f"{inner}if {value} is not _MISSING:"]
                    body += sub_lines
            extra = schema.get("additionalProperties", True)
            if extra is False:
                allowed = self.constant(frozenset(properties))
                body += [f"{inner}if not {allowed}.issuperset({v}):", f"{inner}    raise Invalid()"]
            elif isinstance(extra, dict):
                key, value = f"_k{next(self.names)}", f"_x{next(self.names)}"
                sub_lines = []
                self.emit(extra, value, sub_lines, len(inner) // 4 + 1)
                if sub_lines:
                    allowed = self.constant(frozenset(properties))
                    body += [
                        f"{inner}for {key}, {value} in {v}.items():",
                        f"{inner}    if {key} in {allowed}:",
                        f"{inner}        continue",
                    ] + sub_lines
            elif extra is not True:
                raise SchemaNotSupported("additionalProperties")
            if kind != "object" and body:
                out += [f"{pad}if type({v}) is dict:"] + body

        for sub in schema.get("allOf", ()):
            self.emit(sub, v, out, depth)
        if "anyOf" in schema:
            tests = " or ".join(f"{self.predicate(sub)}({v})" for sub in schema["anyOf"])
            out += [f"{pad}if not ({tests}):", fail]
        if "oneOf" in schema:
            tests = ", ".join(f"{self.predicate(sub)}({v})" for sub in schema["oneOf"])
            out += [f"{pad}if ({tests},).count(True) != 1:", fail]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
