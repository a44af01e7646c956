"""problem+json for every error, with a sentence that says what was wrong."""

from __future__ import annotations

import logging

from connexion import validators as connexion_validators
from connexion.exceptions import BadRequestProblem, ProblemException  # re-exported
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.problem import problem
from jsonschema import Draft4Validator

from tracker.events import EVENT_SCHEMAS, Invalid, describe_error, detect_format, rename_legacy, validator

log = logging.getLogger("tracker.api")


def not_found(detail: str) -> ProblemException:
    return ProblemException(status=404, title="Not Found", detail=detail)


def bad_request(detail: str) -> ProblemException:
    return ProblemException(status=400, title="Bad Request", detail=detail)


def body_not_utf8(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # Connexion decodes a JSON body before its own error handling; a body that is not
    # UTF-8 would otherwise surface as a 500.
    return problem(
        status=400,
        title="Bad Request",
        detail=f"the request body is not UTF-8 ({exc}); send a JSON document encoded in UTF-8",
    )


def database_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
    return problem(
        status=503,
        title="Service Unavailable",
        detail="The database is unreachable right now; retry in a few seconds.",
        headers={"Retry-After": "5"},
    )


class BodyValidator(connexion_validators.JSONRequestBodyValidator):
    """Connexion's body check, listing every violation in the consumer's words (a regular
    expression in a message helps nobody; "contains a control character" does)."""

    def _validate(self, body):
        if not self._nullable and body is None:
            raise BadRequestProblem(detail="the request body must not be empty")
        events_body = "oneOf" in self._schema  # IncomingEvent (POST /v1/events), resolved by Connexion
        if events_body and isinstance(body, dict) and detect_format(body) == "status_api":
            # Legacy Status API names are accepted over HTTP as on Kafka (the schema shows the
            # modern ones); the consumer's parser, which the handler runs next, renames them.
            body = rename_legacy(body)
            if isinstance(body, Invalid):
                raise BadRequestProblem(detail=f"invalid event ({body.reason}): {body.detail}")
        errors = sorted(self._validator.iter_errors(body), key=lambda e: (list(e.path), e.validator))
        prefix = ""
        if errors and events_body and isinstance(body, dict) and errors[0].validator == "oneOf" and not errors[0].path:
            # "not valid under any of the given schemas" helps nobody: name the format the
            # consumer would read it as, and list what that format misses.
            name = EVENT_SCHEMAS[detect_format(body)]
            errors = sorted(validator(name).iter_errors(body), key=lambda e: (list(e.path), e.validator)) or errors
            prefix = f"not a valid {name}: "
        if errors:
            raise BadRequestProblem(detail=prefix + "; ".join(describe_error(e) for e in errors[:10]))
        return None


class ParameterValidator(connexion_validators.ParameterValidator):
    """Connexion's parameter check, with messages that name the parameter and what it allows."""

    @staticmethod
    def validate_parameter(parameter_type, value, param, param_name=None):
        if value is not None and not (isinstance(value, str) and "\x00" in value):
            # Fast path: one compiled validator per parameter, instead of Connexion's deepcopy
            # and new validator on every request (a third of a trace lookup's time).
            if _cached_validator(param).is_valid(value):
                return None
        if isinstance(value, str) and "\x00" in value:
            return (
                f"{parameter_type} parameter {param['name']!r} contains the character U+0000, "
                "which no trace, service or path can contain"
            )
        error = connexion_validators.ParameterValidator.validate_parameter(parameter_type, value, param, param_name)
        if not error or error.startswith("Missing"):
            return error
        schema = param.get("schema", param)
        described = (
            schema.get("description")
            or param.get("description")
            or next((part.get("description") for part in schema.get("allOf", []) if part.get("description")), None)
        )
        allowed = described or ", ".join(
            f"{k} {v}"
            for k, v in schema.items()
            if k in ("type", "enum", "minimum", "maximum", "minLength", "maxLength")
        )
        allowed = " ".join(allowed.split())  # descriptions are wrapped YAML blocks
        first_line = error.splitlines()[0]
        if "does not match" in first_line:  # a regular expression helps nobody; the description does
            first_line = f"{value!r} is not in the expected form"
        return f"{parameter_type} parameter {param['name']!r}: {first_line} (allowed: {allowed})"


_VALIDATORS: dict[int, tuple[dict, Draft4Validator]] = {}


def _cached_validator(param: dict) -> Draft4Validator:
    # Keyed by the parameter object Connexion keeps for the life of the app; the
    # object itself is kept alongside so that its id cannot be reused.
    entry = _VALIDATORS.get(id(param))
    if entry is None or entry[0] is not param:
        entry = (param, Draft4Validator(param.get("schema", param), format_checker=Draft4Validator.FORMAT_CHECKER))
        _VALIDATORS[id(param)] = entry
    return entry[1]
