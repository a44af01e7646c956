"""What Connexion's router decided for a request, for our own middlewares."""

from __future__ import annotations


def operation_id(scope) -> str | None:
    """The spec's operationId the request was routed to (None: no route matched, or not yet
    routed). Connexion's router shallow-copies the scope but shares its ``extensions`` dict, so
    a middleware above the router sees it once the request has gone down, one below at once."""
    return scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id")
