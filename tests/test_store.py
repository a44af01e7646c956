"""Writing batches to the real PostgreSQL: idempotent, and the trace state independent of arrival order."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.store import prepare_connection, write_batch
from tests.helpers.factories import (
    BASE,
    events_of,
    payload_tracker,
    pipeline_trace,
    status_api,
    tracker_event,
    with_status_step,
)
from tests.helpers.reference import expected_rollups, expected_state, stored_rollups, stored_state
from tracker.db import use_fast_timestamps


async def test_redelivered_batch_writes_each_event_once(db):
    await prepare_connection(db)
    events = events_of(pipeline_trace("t-1", random.Random(1)) + pipeline_trace("t-2", random.Random(2), fail=True))
    first = await write_batch(db, events)
    state_after_first = await stored_state(db)
    again = await write_batch(db, events)
    assert (first.inserted, first.duplicates) == (len(events), 0)
    assert (again.inserted, again.duplicates) == (0, len(events))
    assert await db.fetchval("SELECT count(*) FROM events") == len(events)
    assert await stored_state(db) == state_after_first == expected_state(events)
    assert await stored_rollups(db) == expected_rollups(events)


async def test_same_event_twice_in_one_batch_is_stored_once(db):
    await prepare_connection(db)
    events = events_of([payload_tracker("t", "ingress", "received", BASE)])
    result = await write_batch(db, events * 3)
    assert (result.inserted, result.duplicates) == (1, 2)
    assert (await stored_state(db))[0]["t"]["event_count"] == 1


async def test_one_event_id_at_two_times_is_two_events_and_a_repeat_is_one(db):
    # The key is (event_id, ts): a batch where an id repeats takes the exact path (store.py).
    await prepare_connection(db)
    events = events_of(
        [
            tracker_event("t", "copy", "received", BASE, event_id="e-1"),
            tracker_event("t", "copy", "success", BASE + timedelta(seconds=1), event_id="e-1"),
            tracker_event("t", "copy", "received", BASE, event_id="e-1"),
            tracker_event("t", "copy", "received", BASE, event_id="e-2"),
        ]
    )
    result = await write_batch(db, events)
    assert (result.inserted, result.duplicates) == (3, 1)
    assert await db.fetchval("SELECT count(*) FROM events WHERE event_id = 'e-1'") == 2
    assert await stored_state(db) == expected_state(events)


async def test_both_formats_land_in_one_trace(db):
    await prepare_connection(db)
    events = events_of(
        [
            payload_tracker("mixed", "ingress", "received", BASE),
            status_api("mixed", "copy", True, BASE + timedelta(seconds=2)),
            {
                "id": "mixed",
                "handler": "publish",
                "status": "FAILED",
                "run_status": "FINISHED",
                "date_end": (BASE + timedelta(seconds=5)).isoformat(),
                "errors": [{"message": {"en": "no space"}}],
            },
        ]
    )
    await write_batch(db, events)
    traces, services = await stored_state(db)
    assert traces["mixed"]["done"] and traces["mixed"]["status"] == "failed"
    assert set(s for _, s in services) == {"ingress", "copy", "publish"}
    assert await db.fetchval("SELECT errors FROM events WHERE service = 'publish'") == ["no space"]
    assert await db.fetchval("SELECT errors FROM events WHERE service = 'copy'") == []
    # A batch in which no event lists errors leaves the column out of its COPY (copy_rows):
    # the default gives the same empty list.
    await write_batch(db, events_of([payload_tracker("mixed", "egress", "received", BASE + timedelta(seconds=6))]))
    assert await db.fetchval("SELECT errors FROM events WHERE service = 'egress'") == []


async def test_status_api_steps_count_from_their_start_time(db):
    """Three 1 s steps back to back: each service took 1 s and the trace 3 s, in the trace
    document as in the elapsed-time rollups (it showed 0 s per service and 2 s in total)."""
    await prepare_connection(db)
    steps = [
        status_api("steps", name, True, BASE + timedelta(seconds=i + 1))
        for i, name in enumerate(("fetch", "convert", "publish"))
    ]
    steps[-1]["trace_status"] = "FINISHED"
    events = events_of(steps)
    await write_batch(db, events)
    for name in ("fetch", "convert", "publish"):
        row = await db.fetchrow(
            "SELECT first_at, last_at FROM trace_services WHERE trace_id = 'steps' AND service = $1", name
        )
        assert row["last_at"] - row["first_at"] == timedelta(seconds=1), name
    trace = await db.fetchrow("SELECT first_at, last_at, finish_at FROM traces WHERE trace_id = 'steps'")
    assert trace["first_at"] == BASE and trace["finish_at"] - trace["first_at"] == timedelta(seconds=3)
    assert await stored_state(db) == expected_state(events)
    assert await stored_rollups(db) == expected_rollups(events)


async def test_trace_status_rules(db):
    """done/failed/in_progress as documented: the finishing event decides; else any failed service."""
    await prepare_connection(db)
    t0 = BASE
    docs = [
        # in progress: nothing failed, not finished
        payload_tracker("running", "a", "received", t0),
        # failed: a service's latest event is an error, not finished
        payload_tracker("broken", "a", "received", t0),
        payload_tracker("broken", "a", "error", t0 + timedelta(seconds=1)),
        # recovered: the service failed, then succeeded later -> not failed
        payload_tracker("recovered", "a", "error", t0),
        payload_tracker("recovered", "a", "success", t0 + timedelta(seconds=1)),
        # finished OK although a service failed earlier: the finishing event decides
        payload_tracker("finished-ok", "a", "error", t0),
        tracker_event("finished-ok", "b", "success", t0 + timedelta(seconds=2), trace_status="FINISHED"),
        # finished with an error
        tracker_event("finished-bad", "b", "error", t0, trace_status="FINISHED"),
    ]
    await write_batch(db, events_of(docs))
    traces, _ = await stored_state(db)
    status = {t: (v["done"], v["status"]) for t, v in traces.items()}
    assert status == {
        "running": (False, "in_progress"),
        "broken": (False, "failed"),
        "recovered": (False, "in_progress"),
        "finished-ok": (True, "success"),
        "finished-bad": (True, "failed"),
    }


async def test_equal_timestamps_are_ordered_by_event_id(db):
    await prepare_connection(db)
    docs = [
        tracker_event("tie", "a", "success", BASE, event_id="b-event"),
        tracker_event("tie", "a", "error", BASE, event_id="a-event"),
    ]
    await write_batch(db, events_of(list(reversed(docs))))
    _, services = await stored_state(db)
    assert services[("tie", "a")]["latest_status"] == "success"  # "b-event" > "a-event"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), batch_sizes=st.lists(st.integers(1, 7), min_size=1, max_size=6), data=st.data())
async def test_trace_state_does_not_depend_on_arrival_order(db, seed, batch_sizes, data):
    """The same events in any order, in any batch split, with redeliveries: the same state."""
    await prepare_connection(db)
    rng = random.Random(seed)
    prefix = f"p{seed}-{len(batch_sizes)}-"
    docs = []
    for i in range(3):
        docs += with_status_step(
            pipeline_trace(
                f"{prefix}{i}", rng, services=rng.randrange(1, 4), fail=rng.random() < 0.4, finish=rng.random() < 0.6
            ),
            rng,
        )
    events = events_of(docs)
    shuffled = data.draw(st.permutations(events))
    # Redeliver a random few, as Kafka would after a crash before commit.
    shuffled += data.draw(st.lists(st.sampled_from(events), max_size=5))
    i = 0
    sizes = itertools.cycle(batch_sizes)
    while i < len(shuffled):
        n = next(sizes)
        await write_batch(db, shuffled[i : i + n])
        i += n
    traces, services = await stored_state(db)
    want_traces, want_services = expected_state(events)
    assert {k: v for k, v in traces.items() if k.startswith(prefix)} == want_traces
    assert {k: v for k, v in services.items() if k[0].startswith(prefix)} == want_services


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, 9), data=st.data())
async def test_rollups_equal_a_from_scratch_computation_in_any_order(database_url, seed, batch_size, data):
    """Counts and elapsed-time histograms: exact under reordering, batch splits and redelivery."""
    import asyncpg

    from tracker.db import init_connection

    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    try:
        await conn.execute("TRUNCATE events, traces, trace_services, rollup_counts_hour, rollup_elapsed")
        await prepare_connection(conn)
        rng = random.Random(seed)
        docs = []
        for i in range(4):
            docs += with_status_step(
                pipeline_trace(
                    f"r{i}", rng, services=rng.randrange(1, 4), fail=rng.random() < 0.4, finish=rng.random() < 0.7
                ),
                rng,
            )
        # Status API events carry their own start_time; a late "received" moves a service's start.
        docs.append(status_api("r0", "svc0", True, BASE + timedelta(hours=30)))
        events = events_of(docs)
        shuffled = data.draw(st.permutations(events)) + data.draw(st.lists(st.sampled_from(events), max_size=4))
        for i in range(0, len(shuffled), batch_size):
            await write_batch(conn, shuffled[i : i + batch_size])
        assert await stored_rollups(conn) == expected_rollups(events)
        assert await stored_state(conn) == expected_state(events)
    finally:
        await conn.close()


async def test_elapsed_bins_are_those_of_the_sql_function(db):
    """The consumer bins elapsed times in Python; migrations and the documentation use the SQL
    function tracker_elapsed_bin. They agree at every bin boundary, one microsecond either side."""
    from consumer.store import _THRESHOLDS, elapsed_bin

    values = [timedelta(microseconds=us) for t in _THRESHOLDS for us in (t - 1, t, t + 1)]
    values += [timedelta(0), timedelta(microseconds=1), timedelta(days=30)]
    rows = await db.fetch("SELECT x, tracker_elapsed_bin(x) AS bin FROM unnest($1::interval[]) AS x", values)
    assert [(r["x"], elapsed_bin(r["x"])) for r in rows] == [(r["x"], r["bin"]) for r in rows]


async def test_an_offset_time_counts_in_its_utc_minute_and_hour(db):
    """10:45+05:30 is 05:15Z: its hour bucket is 05:00Z (taking the hour in +05:30 gave 04:30Z)."""
    await prepare_connection(db)
    doc = tracker_event("offset", "a", "received", BASE)
    doc["timestamp"] = "2024-05-01T10:45:00+05:30"
    [event] = events_of([doc])
    assert event.timestamp.utcoffset() == timedelta(0)
    await write_batch(db, [event])
    minute = await db.fetchval("SELECT bucket FROM rollup_counts WHERE service = 'a'")
    hour = await db.fetchval("SELECT bucket FROM rollup_counts_hour WHERE service = 'a'")
    assert (minute.isoformat(), hour.isoformat()) == ("2024-05-01T05:15:00+00:00", "2024-05-01T05:00:00+00:00")


async def test_a_second_batch_adds_to_every_minute_of_an_hour_already_counted(db):
    """Each of the 60 per-minute counts of an existing hour row is added to, none replaced or
    lost: two batches with one event in every minute of the same hour, service and status."""
    await prepare_connection(db)
    hour = BASE.replace(minute=0, second=0, microsecond=0)
    for batch in ("first", "second"):
        await write_batch(
            db,
            events_of([tracker_event(f"{batch}-{m}", "a", "received", hour + timedelta(minutes=m)) for m in range(60)]),
        )
    rows = await db.fetch("SELECT bucket, events FROM rollup_counts WHERE service = 'a' ORDER BY bucket")
    assert [(r["bucket"], r["events"]) for r in rows] == [(hour + timedelta(minutes=m), 2) for m in range(60)]
    assert await db.fetchval("SELECT events FROM rollup_counts_hour WHERE service = 'a'") == 120


async def test_a_writer_that_loses_the_race_to_create_a_trace_merges_with_the_winner(database_url):
    """Two writers create the same new trace (a producer that does not key by trace id): the
    second finds no row to lock, its insert waits for the first and then meets its row. It does
    its state step again, now merging with that row: both writers' events count, once."""
    import asyncio

    import asyncpg

    from tracker.db import init_connection

    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        for conn in (first, second):
            await init_connection(conn)
            await prepare_connection(conn)
        docs = pipeline_trace("race", random.Random(3), services=3, fail=True, finish=True)
        mine, theirs = events_of(docs[::2]), events_of(docs[1::2])
        # The first writer's batch, written but not committed: inside an outer transaction,
        # write_batch's own transaction is a savepoint.
        outer = first.transaction()
        await outer.start()
        await write_batch(first, mine)
        racing = asyncio.create_task(write_batch(second, theirs))
        async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as watch:
            for _ in range(200):
                waiting = await watch.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the second writer never waited for the first one's new rows"
        await outer.commit()
        result = await asyncio.wait_for(racing, 30)
        assert result.inserted == len(theirs)
        assert await stored_state(first) == expected_state(mine + theirs)
        assert await stored_rollups(first) == expected_rollups(mine + theirs)
    finally:
        for conn in (first, second):
            await conn.close()


async def test_the_writers_timestamp_codec_reads_and_writes_what_asyncpgs_own_does(database_url):
    """The consumer's connections encode timestamptz themselves (tracker/db.py, for speed): every
    value, offsets, microseconds, before 2000 and infinity, means the same to PostgreSQL and comes
    back the same as through asyncpg's codec; a naive time is refused, never taken as local time."""
    utc = UTC
    values = [
        BASE,
        BASE + timedelta(microseconds=1),
        datetime(1999, 12, 31, 23, 59, 59, 999999, utc),
        datetime(1970, 1, 1, tzinfo=utc),
        datetime(1, 1, 1, tzinfo=utc),
        datetime(9999, 12, 31, 23, 59, tzinfo=utc),
        datetime(2024, 5, 1, 10, 45, 0, 123456, timezone(timedelta(hours=5, minutes=30))),
        datetime.max.replace(tzinfo=utc),
        datetime.min.replace(tzinfo=utc),
        datetime.max,
        datetime.min,
    ]
    fast, plain = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await use_fast_timestamps(fast)
        query = "SELECT $1::timestamptz::text, $1::timestamptz, $2::timestamptz[]"
        for value in values:
            got, want = await fast.fetchrow(query, value, [value]), await plain.fetchrow(query, value, [value])
            assert got is not None and want is not None and tuple(got) == tuple(want), value
        rendered = "SELECT x::timestamptz FROM unnest($1::text[]) AS x"
        texts = ["infinity", "-infinity", "2000-01-01 00:00:00+00", "1969-07-20 20:17:40.5+00"]
        assert await fast.fetch(rendered, texts) == await plain.fetch(rendered, texts)
        with pytest.raises(asyncpg.DataError, match="offset-naive"):
            await fast.fetchval("SELECT $1::timestamptz", datetime(2024, 5, 1))
    finally:
        await fast.close()
        await plain.close()
