"""Write one batch of events and the trace state and rollups they imply, in one transaction.

Idempotent by event key (event_id, ts): only rows actually inserted feed the
state, so a redelivered batch changes nothing.

Order independent: every merge (least, greatest, sum, latest by (ts, event_id))
is commutative, so the state does not depend on the order in which events arrive.

Where the work is done (bench/ingest measures it; README, "How it works"):
1. events go in by one binary COPY straight into the partitioned table; only when
   a key is already there (a producer that sent an event twice) does the batch take
   the exact path through a staging table and ON CONFLICT;
2. the batch is folded in Python into one row per trace and per (trace, service);
3. the state rows those keys already have are read and locked (``SELECT ... FOR
   UPDATE``, in key order), merged with the fold in Python, and written back as
   final values: new rows by COPY, existing ones by one UPDATE each, no CASE
   expressions for PostgreSQL to evaluate. The elapsed-time histogram changes
   follow from the old and new rows, also in Python;
4. the rollups are commutative counters: upserts that add, keys sorted; the counts
   per minute travel inside their hour's row (60 counts), one row per hour, service
   and status rather than one per minute (migration 007).
PostgreSQL then only stores rows; everything it used to compute per row (the
merge rules, the status, the histogram bins) is done once here.

Concurrency: writers take their locks in one global order (events sorted by key;
existing traces, then existing trace services, by key; new rows inserted sorted by
key; rollup keys sorted), and a wait is only ever for the resource being taken, so
no cycle can form. A trace that another writer creates between our read and our
insert (a producer that does not key by trace id) fails our COPY with a unique
violation; the state step, inside a savepoint, is then done again, and finds the
row to lock.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import asyncpg
import orjson

from consumer.deadletter import DeadLetter, record_dead_letters
from tracker.db import Connection, PartitionAttached, use_fast_timestamps
from tracker.events import EVENT_COLUMNS, TRACE_ATTRIBUTES, Event, copy_rows

_COLS = ", ".join(EVENT_COLUMNS)

# Per connection; ON COMMIT DELETE ROWS empties it at the end of every batch.
CREATE_STAGING = "CREATE TEMP TABLE IF NOT EXISTS staging_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"

# The exact path, when the fast COPY met a key already stored.
INSERT_NEW = f"""
INSERT INTO events ({_COLS}) SELECT {_COLS} FROM staging_events
ON CONFLICT (event_id, ts) DO NOTHING RETURNING event_id, ts
"""

# The state columns, in the order of the rows built below.
SERVICE_COLUMNS = (
    "trace_id",
    "service",
    "first_at",
    "last_at",
    "event_count",
    "latest_at",
    "latest_event_id",
    "latest_status",
    "latest_failed",
    "start_at",
    "outcome_at",
    "outcome_event_id",
    "outcome_failed",
)
TRACE_COLUMNS = (
    "trace_id",
    "first_at",
    "last_at",
    "active_hour",
    "event_count",
    "error_count",
    "done",
    "finish_at",
    "finish_event_id",
    "finish_failed",
    "failed_services",
    "status",
    *TRACE_ATTRIBUTES,
)

# Read and lock the rows of the traces in the batch, in key order (the ids come sorted),
# each by a primary-key probe whatever the statistics.
LOCK_TRACES = f"""
SELECT x.* FROM unnest($1::text[]) WITH ORDINALITY AS k(trace_id, n) CROSS JOIN LATERAL (
    SELECT {", ".join(TRACE_COLUMNS)} FROM traces t WHERE t.trace_id = k.trace_id FOR UPDATE) x
ORDER BY k.n
"""
LOCK_SERVICES = f"""
SELECT x.* FROM unnest($1::text[]) WITH ORDINALITY AS k(trace_id, n) CROSS JOIN LATERAL (
    SELECT {", ".join(SERVICE_COLUMNS)} FROM trace_services s WHERE s.trace_id = k.trace_id
    ORDER BY s.service FOR UPDATE) x
ORDER BY k.n
"""


def _update(table: str, columns: Sequence[str], types: Sequence[str], key: Sequence[str], extra: str = "") -> str:
    """UPDATE ``table`` to the given final values, one row per element of the arrays."""
    args = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    sets = ", ".join(f"{c} = u.{c}" for c in columns if c not in key)
    join = " AND ".join(f"x.{k} = u.{k}" for k in key)
    return f"UPDATE {table} x SET {sets}{extra} FROM unnest({args}) AS u({', '.join(columns)}) WHERE {join}"


UPDATE_SERVICES = _update(
    "trace_services",
    SERVICE_COLUMNS,
    (
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "bigint",
        "timestamptz",
        "text",
        "text",
        "boolean",
        "timestamptz",
        "timestamptz",
        "text",
        "boolean",
    ),
    ("trace_id", "service"),
)
UPDATE_TRACES = _update(
    "traces",
    TRACE_COLUMNS,
    (
        "text",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "bigint",
        "bigint",
        "boolean",
        "timestamptz",
        "text",
        "boolean",
        "integer",
        "text",
        *("text",) * len(TRACE_ATTRIBUTES),
    ),
    ("trace_id",),
    ", updated_at = now()",
)

# Commutative counters: add. Keys come sorted (the lock order between writers).
# The rows travel as one JSON text, an array of objects serialised by orjson in C, and
# json_to_recordset turns it into typed rows in C too, the 60 per-minute counts of an hour's
# row (migration 007) straight into its integer[]. Before, as a jsonb array of arrays, each
# field was extracted and cast in SQL and the counts went jsonb -> text -> integer[]: 35 vs
# 23 µs of PostgreSQL per row of 750-row batches whose rows all existed (scratch, 32 alternating
# rounds; the client's cost 2.1 vs 2.8 µs). As parallel arrays (unnest) asyncpg's encoder
# spends ~0.4 µs of Python per element. An existing row's new array is one ARRAY[] of the 60
# sums: reading an element of a flat integer array is direct, where an unnest and array_agg
# per row cost PostgreSQL about twice as much.
UPSERT_COUNTS = (
    """
INSERT INTO rollup_counts_hour AS r (bucket, service, status, events, minutes)
SELECT * FROM json_to_recordset($1::text::json)
    AS x(bucket timestamptz, service text, status text, events bigint, minutes integer[])
ON CONFLICT (bucket, service, status) DO UPDATE SET events = r.events + EXCLUDED.events, minutes = ARRAY["""
    + ", ".join(f"r.minutes[{i}] + EXCLUDED.minutes[{i}]" for i in range(1, 61))
    + "]"
)
COUNT_FIELDS = ("bucket", "service", "status", "events", "minutes")
UPSERT_ELAPSED = """
INSERT INTO rollup_elapsed AS r (bucket, kind, service, failed, bin, n)
SELECT * FROM json_to_recordset($1::text::json)
    AS x(bucket timestamptz, kind text, service text, failed boolean, bin smallint, n bigint)
ON CONFLICT (bucket, kind, service, failed, bin) DO UPDATE SET n = r.n + EXCLUDED.n
"""
ELAPSED_FIELDS = ("bucket", "kind", "service", "failed", "bin", "n")


def _json_rows(fields: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Rows as the JSON text json_to_recordset reads: an array of objects (orjson, in C)."""
    return orjson.dumps([dict(zip(fields, row, strict=True)) for row in rows]).decode()


def _elapsed_thresholds() -> list[int]:
    """Bin b of the elapsed-time histogram holds (1.15^(b-1), 1.15^b] ms, as the SQL function
    tracker_elapsed_bin (migration 002) computes it: ceil(ln(ms) / ln(1.15)), 0 for <= 1 ms.
    As whole microseconds: bin(us) = the least b with us <= 1000 * 1.15^b, so comparing
    integers against floor(1000 * 1.15^b), computed once here in 40-digit decimals, gives the
    same bins without the float rounding of log() near a boundary."""
    with localcontext() as ctx:
        ctx.prec = 40
        return [int(Decimal(1000) * Decimal("1.15") ** b) for b in range(161)]


_THRESHOLDS = _elapsed_thresholds()
_US = timedelta(microseconds=1)


def elapsed_bin(elapsed: timedelta) -> int:
    """The histogram bin of ``elapsed`` (see _elapsed_thresholds); at most 160 (~ 5 days)."""
    return min(160, bisect.bisect_left(_THRESHOLDS, elapsed // _US))


@dataclass(frozen=True)
class BatchResult:
    inserted: int  # new events
    duplicates: int  # events already stored (redelivery, or the same event sent twice)
    # New events per (service, status), for the business metrics.
    counts: list = field(default_factory=list)
    # Elapsed times that became known: (kind 'service'|'trace', service, failed, seconds).
    elapsed: list = field(default_factory=list)


async def prepare_connection(conn: Connection) -> None:
    """A connection that writes batches: its staging table, and timestamps encoded cheaply."""
    await use_fast_timestamps(conn)
    await conn.execute(CREATE_STAGING)


def _floor(unit: timedelta, **zero: Any):
    """A function: a time truncated to its whole unit, here the hour (UTC, as every time here is).

    datetime.replace takes ~0.94 µs in CPython 3.11 and was the costliest call per event in
    fold (bench/ingest's profile), so it is called once per unit: the last unit returned is
    checked first (a partition's events come in time order: two comparisons), then a cache
    keyed by the calendar fields (~0.26 µs, for events out of time order: several partitions
    interleaved, traces sorted by id). No await inside: writers sharing it cannot interleave."""
    start = end = datetime.max.replace(tzinfo=UTC)
    by_unit: dict[tuple, datetime] = {}
    # The calendar fields that name a unit: those the truncation keeps, read in C.
    calendar = operator.attrgetter(*(f for f in ("year", "month", "day", "hour", "minute") if f not in zero))

    def floor(ts: datetime) -> datetime:
        nonlocal start, end
        if start <= ts < end:
            return start
        key = calendar(ts)
        found = by_unit.get(key)
        if found is None:
            if len(by_unit) >= 4096:  # bounded: a batch spans a few hundred units at most
                by_unit.clear()
            found = by_unit[key] = ts.replace(**zero)
        start, end = found, found + unit
        return start

    return floor


_hour = _floor(timedelta(hours=1), minute=0, second=0, microsecond=0)


# Indexes into the folded rows (lists, mutated in place: this runs for every event).
# A service: the SERVICE_COLUMNS without the key.
(
    S_FIRST,
    S_LAST,
    S_N,
    S_LATEST_AT,
    S_LATEST_ID,
    S_LATEST_STATUS,
    S_LATEST_FAILED,
    S_START,
    S_OUTCOME_AT,
    S_OUTCOME_ID,
    S_OUTCOME_FAILED,
) = range(11)
# A trace, as folded: first, last, events, failed events, done, finish (at, id, failed), attributes.
T_FIRST, T_LAST, T_N, T_N_FAILED, T_DONE, T_FINISH_AT, T_FINISH_ID, T_FINISH_FAILED, T_ATTRS = range(9)


@dataclass
class Fold:
    """A batch reduced to one row per (trace, service), per trace and per rollup key."""

    services: dict[tuple[str, str], list]
    traces: dict[str, list]
    # (hour, service, status) -> events in each minute of that hour (index: the minute)
    hours: dict[tuple[datetime, str, str], list[int]]


def fold(events: Sequence[Event]) -> Fold:
    services: dict[tuple[str, str], list] = {}
    traces: dict[str, list] = {}
    hours: dict[tuple, list[int]] = {}
    for e in events:
        ts, eid, failed = e.timestamp, e.event_id, e.failed
        start_time = e.start_time
        # A service's (and a trace's) first time is its earliest event or Status API step
        # start, so that a 1 s step shows 1 s, as the elapsed-time rollups count it.
        start = ts if start_time is None or start_time >= ts else start_time
        key = (e.trace_id, e.service)
        s = services.get(key)
        outcome = failed or e.status == "success"
        if s is None:
            services[key] = [
                start,
                ts,
                1,
                ts,
                eid,
                e.status,
                failed,
                start,
                ts if outcome else None,
                eid if outcome else None,
                failed if outcome else None,
            ]
        else:
            if start < s[S_FIRST]:
                s[S_FIRST] = s[S_START] = start
            if ts > s[S_LAST]:
                s[S_LAST] = ts
            s[S_N] += 1
            if ts > s[S_LATEST_AT] or (ts == s[S_LATEST_AT] and eid > s[S_LATEST_ID]):
                s[S_LATEST_AT], s[S_LATEST_ID], s[S_LATEST_STATUS], s[S_LATEST_FAILED] = ts, eid, e.status, failed
            if outcome and (
                s[S_OUTCOME_AT] is None or ts < s[S_OUTCOME_AT] or (ts == s[S_OUTCOME_AT] and eid < s[S_OUTCOME_ID])
            ):
                s[S_OUTCOME_AT], s[S_OUTCOME_ID], s[S_OUTCOME_FAILED] = ts, eid, failed
        finished = e.trace_status == "FINISHED"
        attrs = (e.account, e.org_id, e.inventory_id, e.system_id, e.source, e.domain, e.domain_id)
        t = traces.get(e.trace_id)
        if t is None:
            traces[e.trace_id] = [
                start,
                ts,
                1,
                int(failed),
                finished,
                ts if finished else None,
                eid if finished else None,
                failed if finished else None,
                attrs,
            ]
        else:
            if start < t[T_FIRST]:
                t[T_FIRST] = start
            if ts > t[T_LAST]:
                t[T_LAST] = ts
            t[T_N] += 1
            t[T_N_FAILED] += failed
            if finished:
                t[T_DONE] = True
                if t[T_FINISH_AT] is None or ts > t[T_FINISH_AT] or (ts == t[T_FINISH_AT] and eid > t[T_FINISH_ID]):
                    t[T_FINISH_AT], t[T_FINISH_ID], t[T_FINISH_FAILED] = ts, eid, failed
            if attrs != t[T_ATTRS]:
                t[T_ATTRS] = _least(t[T_ATTRS], attrs)
        hk = (_hour(ts), e.service, e.status)
        by_minute = hours.get(hk)
        if by_minute is None:
            by_minute = hours[hk] = [0] * 60
        by_minute[ts.minute] += 1
    return Fold(services, traces, hours)


def _least(old: Sequence, new: Sequence) -> tuple:
    """Per position, the smallest value that is not None: whatever the order they came in."""
    return tuple([b if a is None or (b is not None and b < a) else a for a, b in zip(old, new, strict=True)])


@dataclass
class StateChanges:
    """What the merge produced: rows to insert and to update, and the histogram changes."""

    new_services: list[tuple] = field(default_factory=list)
    changed_services: list[tuple] = field(default_factory=list)
    new_traces: list[tuple] = field(default_factory=list)
    changed_traces: list[tuple] = field(default_factory=list)
    # (hour, kind, service, failed, bin) -> +n/-n
    elapsed: dict[tuple, int] = field(default_factory=dict)
    # (kind, service, failed, seconds) that became known in this batch, for the Prometheus histograms
    observed: list[tuple] = field(default_factory=list)


def _elapsed_change(changes: StateChanges, kind: str, service: str, old: tuple | None, new: tuple) -> None:
    """old/new: (start, outcome at, outcome failed) of a service or trace; an outcome at of None
    means not known yet. Moves the histogram from the old value to the new one."""
    if old == new:
        return
    for (start, at, failed), n in ((old, -1), (new, 1)) if old is not None else ((new, 1),):
        if at is None:
            continue
        elapsed = at - start
        key = (_hour(at), kind, service, failed, elapsed_bin(elapsed))
        changes.elapsed[key] = changes.elapsed.get(key, 0) + n
        if n == 1:
            changes.observed.append((kind, service, failed, elapsed.total_seconds()))


def merge(
    batch: Fold, old_traces: dict[str, asyncpg.Record], old_services: dict[tuple[str, str], asyncpg.Record]
) -> StateChanges:
    """The final state rows: each folded row merged with the row already stored, if any."""
    changes = StateChanges()
    failed_delta: dict[str, int] = {}
    for key in sorted(batch.services):
        f = batch.services[key]
        o = old_services.get(key)
        if o is None:
            row = f
            changes.new_services.append((*key, *row))
            old_failed = False
            old_elapsed = None
        else:
            row = list(o.values())[2:]
            if f[S_FIRST] < row[S_FIRST]:
                row[S_FIRST] = f[S_FIRST]
            if f[S_LAST] > row[S_LAST]:
                row[S_LAST] = f[S_LAST]
            row[S_N] += f[S_N]
            if (f[S_LATEST_AT], f[S_LATEST_ID]) > (row[S_LATEST_AT], row[S_LATEST_ID]):
                row[S_LATEST_AT : S_LATEST_FAILED + 1] = f[S_LATEST_AT : S_LATEST_FAILED + 1]
            if f[S_START] < row[S_START]:
                row[S_START] = f[S_START]
            if f[S_OUTCOME_AT] is not None and (
                row[S_OUTCOME_AT] is None or (f[S_OUTCOME_AT], f[S_OUTCOME_ID]) < (row[S_OUTCOME_AT], row[S_OUTCOME_ID])
            ):
                row[S_OUTCOME_AT : S_OUTCOME_FAILED + 1] = f[S_OUTCOME_AT : S_OUTCOME_FAILED + 1]
            changes.changed_services.append((*key, *row))
            old_failed = o["latest_failed"]
            old_elapsed = (o["start_at"], o["outcome_at"], o["outcome_failed"])
        if row[S_LATEST_FAILED] != old_failed:
            failed_delta[key[0]] = failed_delta.get(key[0], 0) + (1 if row[S_LATEST_FAILED] else -1)
        _elapsed_change(
            changes, "service", key[1], old_elapsed, (row[S_START], row[S_OUTCOME_AT], row[S_OUTCOME_FAILED])
        )

    for trace_id in sorted(batch.traces):
        f = batch.traces[trace_id]
        o = old_traces.get(trace_id)
        failed_services = failed_delta.get(trace_id, 0)
        if o is None:
            first, last, n, n_failed, done = f[T_FIRST], f[T_LAST], f[T_N], f[T_N_FAILED], f[T_DONE]
            finish = (f[T_FINISH_AT], f[T_FINISH_ID], f[T_FINISH_FAILED])
            attrs = f[T_ATTRS]
            old_elapsed = None
        else:
            first, last = min(o["first_at"], f[T_FIRST]), max(o["last_at"], f[T_LAST])
            n, n_failed = o["event_count"] + f[T_N], o["error_count"] + f[T_N_FAILED]
            done = o["done"] or f[T_DONE]
            finish = (o["finish_at"], o["finish_event_id"], o["finish_failed"])
            if f[T_FINISH_AT] is not None and (
                finish[0] is None or (f[T_FINISH_AT], f[T_FINISH_ID]) > (finish[0], finish[1])
            ):
                finish = (f[T_FINISH_AT], f[T_FINISH_ID], f[T_FINISH_FAILED])
            failed_services += o["failed_services"]
            attrs = _least(tuple(o[a] for a in TRACE_ATTRIBUTES), f[T_ATTRS])
            old_elapsed = (o["first_at"], o["finish_at"], o["finish_failed"])
        # The overall status: the finishing event decides; before it, any service whose
        # latest event failed.
        if done:
            status = "failed" if finish[2] else "success"
        else:
            status = "failed" if failed_services > 0 else "in_progress"
        trace_row = (trace_id, first, last, _hour(last), n, n_failed, done, *finish, failed_services, status, *attrs)
        (changes.new_traces if o is None else changes.changed_traces).append(trace_row)
        _elapsed_change(changes, "trace", "", old_elapsed, (first, finish[0], finish[2]))
    return changes


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def _insert_events(conn: Connection, events: list[Event], exact: bool) -> list[Event]:
    """Store the events; returns those that were new.

    Not ``exact``: one COPY into the table, which raises UniqueViolationError (and aborts the
    transaction) if a key is stored already. ``exact``: through the staging table, keeping
    only the new ones — the path of a redelivery."""
    columns, records = copy_rows(events)
    if not exact:
        await conn.copy_records_to_table("events", records=records, columns=columns)
        return events
    await conn.copy_records_to_table("staging_events", records=records, columns=columns)
    new = {(r["event_id"], r["ts"]) for r in await conn.fetch(INSERT_NEW)}
    return [e for e in events if (e.event_id, e.timestamp) in new]


class _Redelivered(Exception):
    """The fast COPY met an event key already stored: write the batch again, the exact way."""


class _LostRace(Exception):
    """Another writer created one of the batch's traces (or services) after we looked."""


async def _write_state(conn: Connection, batch: Fold) -> StateChanges:
    trace_ids = sorted(batch.traces)
    old_traces = {r["trace_id"]: r for r in await conn.fetch(LOCK_TRACES, trace_ids)}
    old_services = (
        {(r["trace_id"], r["service"]): r for r in await conn.fetch(LOCK_SERVICES, trace_ids)} if old_traces else {}
    )  # a trace's services are written with it: no trace, no services
    changes = merge(batch, old_traces, old_services)
    if changes.new_services:
        await conn.copy_records_to_table("trace_services", records=changes.new_services, columns=SERVICE_COLUMNS)
    if changes.changed_services:
        await conn.execute(UPDATE_SERVICES, *_columns(changes.changed_services, len(SERVICE_COLUMNS)))
    if changes.new_traces:
        await conn.copy_records_to_table("traces", records=changes.new_traces, columns=TRACE_COLUMNS)
    if changes.changed_traces:
        await conn.execute(UPDATE_TRACES, *_columns(changes.changed_traces, len(TRACE_COLUMNS)))
    return changes


# (event_id, ts): the events table's key. An Event is a tuple; itemgetter reads it in C.
_event_key = operator.itemgetter(Event._fields.index("event_id"), Event._fields.index("timestamp"))
_event_id = operator.itemgetter(Event._fields.index("event_id"))


def _unique_in_key_order(events: Sequence[Event]) -> tuple[list[Event], list[Event]]:
    """(the events without repeats of a key, in arrival order; the same sorted by key).

    A message sent twice within one batch: keep one (the key would refuse the other). Key
    order: two writers that share keys lock them in the same order. Nearly every batch has
    no two events with one event id, and then the id alone orders them as the key does:
    a set and a sort of strings take half the time of hashing and comparing (id, time) pairs
    (0.28 vs 0.56 µs an event, batches of 2,500; a datetime's hash is computed at every call)."""
    ids = list(map(_event_id, events))
    if len(set(ids)) == len(ids):
        return list(events), sorted(events, key=_event_id)
    arrived = list({_event_key(e): e for e in events}.values())
    return arrived, sorted(arrived, key=_event_key)


async def write_batch(
    conn: Connection, events: Sequence[Event], dead_letters: Sequence[DeadLetter] = ()
) -> BatchResult:
    """Store ``events`` with the trace state and rollups they imply, and the batch's dead
    letters; one transaction."""
    try:
        return await _write_batch(conn, events, dead_letters)
    except asyncpg.CheckViolationError as exc:
        # Late events (older than the pre-created partitions) met their day's partition being
        # created by another consumer's maintenance: see PartitionAttached. Nothing is stored.
        if "partition constraint" not in str(exc):
            raise
        raise PartitionAttached(str(exc)) from exc


async def _write_batch(conn: Connection, events: Sequence[Event], dead_letters: Sequence[DeadLetter]) -> BatchResult:
    arrived, unique = _unique_in_key_order(events)
    # No savepoints: a write is a run of round trips, and at a steady 2,000 events/s those were
    # most of its time (0.7-1.4 ms each on this machine with every process awake; a batch's
    # four SAVEPOINT/RELEASE were 3 ms of its 17). The two conflicts a savepoint used to undo
    # are rare — a key already stored (a redelivery, after a crash or a rebalance) and a trace
    # created by another writer between our look and our insert (a producer that does not
    # key by trace id) — so the whole transaction is rolled back and done again instead (after
    # a key conflict, through the staging table). A redelivered batch pays one wasted COPY.
    exact = False
    while True:
        try:
            return await _write_transaction(conn, len(events), arrived, unique, dead_letters, exact)
        except _Redelivered:
            exact = True
        except _LostRace:
            continue  # looked again, the row is there to lock and merge with


async def _write_transaction(
    conn: Connection,
    messages: int,
    arrived: list[Event],
    unique: list[Event],
    dead_letters: Sequence[DeadLetter],
    exact: bool,
) -> BatchResult:
    async with conn.transaction():
        # Keyed by their source position: other writers never hold those (another partition).
        await record_dead_letters(conn, list(dead_letters))
        try:
            inserted = await _insert_events(conn, unique, exact) if unique else []
        except asyncpg.UniqueViolationError as exc:
            raise _Redelivered from exc
        if not inserted:
            return BatchResult(0, messages)
        # Folded in the order they arrived (each partition's in time order), not the key order:
        # the fold's minute and hour lookups then hit the unit they returned last (_floor).
        batch = fold(arrived if inserted is unique else inserted)
        try:
            changes = await _write_state(conn, batch)
        except asyncpg.UniqueViolationError as exc:
            raise _LostRace from exc
        per_status: dict[tuple[str, str], int] = {}
        counts = []
        for key, by_minute in batch.hours.items():
            n = sum(by_minute)
            counts.append((*key, n, by_minute))
            per_status[key[1:]] = per_status.get(key[1:], 0) + n
        counts.sort()  # by key: the keys are unique, so the lists are never compared
        await conn.execute(UPSERT_COUNTS, _json_rows(COUNT_FIELDS, counts))
        elapsed = sorted((*k, n) for k, n in changes.elapsed.items() if n)
        if elapsed:
            await conn.execute(UPSERT_ELAPSED, _json_rows(ELAPSED_FIELDS, elapsed))
    service_counts = [(service, status, n) for (service, status), n in per_status.items()]
    return BatchResult(len(inserted), messages - len(inserted), service_counts, changes.observed)
