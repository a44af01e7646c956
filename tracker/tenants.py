"""Tenants: which traces a bound API token may see and publish (issue 13, README "Tenants").

A tenant is a value of one of the traces' identity attributes: ``account`` and ``org_id`` (the
Payload Tracker's customers), ``domain`` and ``domain_id`` (the Status API's datasets). A token
bound to tenants sees exactly the traces whose attribute is one of its values (any one field
matching is enough), on every route; a trace that carries none of them does not exist for it
(the same 404 as an unknown id, so ids cannot be probed). A bound ``write`` token publishes
only events that carry one of its tenants.

What a trace carries is its state row's attribute (tracker/consumer's fold: the least non-null
value its events gave), the value the trace search filters on too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FIELDS = ("account", "org_id", "domain", "domain_id")


@dataclass(frozen=True)
class Tenants:
    account: tuple[str, ...] = ()
    org_id: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    domain_id: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Mapping[str, Sequence[str]] | None) -> Tenants | None:
        """From the api_tokens.tenants column; None when the token is not bound."""
        if not value:
            return None
        tenants = cls(**{f: tuple(value.get(f, ())) for f in FIELDS})
        return tenants if tenants.bound else None

    def to_json(self) -> dict[str, list[str]]:
        return {f: list(getattr(self, f)) for f in FIELDS if getattr(self, f)}

    @property
    def bound(self) -> bool:
        return any(getattr(self, f) for f in FIELDS)

    def carries(self, values: Mapping[str, object] | object) -> bool:
        """True when ``values`` (a mapping, or an object with these attributes, e.g. an Event)
        has one of the tenants."""
        get = values.get if isinstance(values, Mapping) else lambda f: getattr(values, f, None)
        return any(get(f) in getattr(self, f) for f in FIELDS if getattr(self, f))

    def describe(self) -> str:
        return "; ".join(f"{f} in {', '.join(repr(v) for v in getattr(self, f))}" for f in FIELDS if getattr(self, f))

    def fragment(self, alias: str = "t") -> str:
        """SQL true for a traces row (``alias``) that carries one of the tenants: a constant
        text with a {} placeholder per field (tracker.queries.search.Where.add numbers them);
        the values go as arrays (``values``)."""
        return "(" + " OR ".join(f"{alias}.{f} = ANY({{}}::text[])" for f in FIELDS) + ")"

    def values(self) -> list[list[str]]:
        return [list(getattr(self, f)) for f in FIELDS]


VISIBLE = "SELECT EXISTS (SELECT 1 FROM traces t WHERE t.trace_id = $1 AND {})".format(
    Tenants().fragment("t").format("$2", "$3", "$4", "$5")
)


async def sees(conn, tenants: Tenants | None, trace_id: str) -> bool:
    """Whether a token with ``tenants`` may see this trace (an unbound token sees every one;
    for a bound one an unknown trace is as unseen as another tenant's)."""
    if tenants is None:
        return True
    return await conn.fetchval(VISIBLE, trace_id, *tenants.values())
