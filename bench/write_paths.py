"""Which way of writing a batch of events to PostgreSQL is fastest?

Same events, same table, fresh database each, batches of --batch events, one
transaction per batch, `ON CONFLICT (event_id, ts) DO NOTHING` in every path:

  executemany  INSERT ... VALUES ($1..$26) per row, pipelined by asyncpg
  unnest       INSERT ... SELECT FROM unnest($1::text[], ...)  (one statement per batch)
  copy         COPY into a temp staging table, then INSERT ... SELECT
  copy+state   the consumer's real path (consumer/store.py): copy, plus the trace rollups

Usage: python -m bench.write_paths [--events 200000] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.common import dataset, fresh_database, services, valid_events
from consumer.store import CREATE_STAGING, write_batch
from tracker.db import init_connection
from tracker.events import EVENT_COLUMNS, Event, copy_rows

_COLS = ", ".join(EVENT_COLUMNS)
EXECUTEMANY = (
    f"INSERT INTO events ({_COLS}) VALUES ({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS)))}) "
    "ON CONFLICT (event_id, ts) DO NOTHING"
)
_TYPES = ["text"] * 4 + ["boolean", "timestamptz", "text", "timestamptz", "timestamptz", "float8"] + ["text"] * 16
# text[][] cannot be unnested row-wise, so errors travel as a JSON text and are cast back.
UNNEST = (
    f"INSERT INTO events ({_COLS}) SELECT "
    + ", ".join(
        "ARRAY(SELECT jsonb_array_elements_text(c21::jsonb))"
        if i == 21
        else f"c{i}::jsonb"
        if EVENT_COLUMNS[i] in ("meta", "body")
        else f"c{i}"
        for i in range(len(EVENT_COLUMNS))
    )
    + " FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))
    + ") AS u("
    + ", ".join(f"c{i}" for i in range(len(EVENT_COLUMNS)))
    + ") ON CONFLICT (event_id, ts) DO NOTHING"
)


async def executemany(conn, events):
    async with conn.transaction():
        await conn.executemany(EXECUTEMANY, events)


async def unnest(conn, events):
    import json

    records = events  # an Event is its own COPY record
    columns = [list(col) for col in zip(*records, strict=True)]
    columns[21] = [json.dumps(v) for v in columns[21]]
    for i in (23, 24):
        columns[i] = [None if v is None else json.dumps(v) for v in columns[i]]
    async with conn.transaction():
        await conn.execute(UNNEST, *columns)


async def copy(conn, events):
    async with conn.transaction():
        columns, records = copy_rows(events)
        await conn.copy_records_to_table("staging_events", records=records, columns=columns)
        await conn.execute(
            f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM staging_events ON CONFLICT (event_id, ts) DO NOTHING"
        )


async def copy_state(conn, events):
    await write_batch(conn, events)


PATHS = {"executemany": executemany, "unnest": unnest, "copy": copy, "copy+state": copy_state}


async def measure(admin_url: str, events: list[Event], batch: int) -> dict[str, float]:
    results: dict[str, float] = {}
    # Two rounds in alternating order, best of two: the first database of a run starts cold.
    order = list(PATHS.items())
    for name, path in order + order[::-1]:
        url = await fresh_database(admin_url, prefix="bench_write")
        conn = await asyncpg.connect(url)
        await init_connection(conn)
        await conn.execute(CREATE_STAGING)
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            await path(conn, events[i : i + batch])
        elapsed = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM events")
        assert stored == len(events), (name, stored)
        await conn.close()
        results[name] = max(results.get(name, 0.0), len(events) / elapsed)
        print(f"  {name:<12} {results[name]:>10,.0f} events/s  ({elapsed:.2f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    events = valid_events(v for _, v in dataset(args.events))
    print(f"write paths: {args.events:,} events, batches of {args.batch}")
    with services() as (_, admin_url):
        results = asyncio.run(measure(admin_url, events, args.batch))
    best = max((k for k in results if k != "copy+state"), key=lambda k: results[k])
    print(
        f"fastest: {best}; vs executemany x{results[best] / results['executemany']:.2f}, "
        f"vs unnest x{results[best] / results['unnest']:.2f}; "
        f"rollups cost {100 * (1 - results['copy+state'] / results['copy']):.0f}% of the copy path"
    )


if __name__ == "__main__":
    main()
