"""Where a consumer's CPU goes per event, stage by stage, each beside its floor.

bench/ingest measures the whole consumer against the broker and PostgreSQL; this takes its two
hot stages apart, in this process, on the same data set, so that a change to either can be
measured in a minute (the machine is noisy: each figure is the best of --rounds, the rounds
alternating):

  parse   parse_message (decode, validate, normalise)   floor: orjson.loads alone
  write   write_batch, batches of --batch events:       floor: one COPY of the same events
          this process's CPU and its PostgreSQL backend's

Usage: python -m bench.hot_path [--events 100000] [--batch 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time

import asyncpg
import orjson

from bench.common import dataset, fresh_database, services, valid_events
from bench.ingest import _cpu_ticks
from consumer.store import prepare_connection, write_batch
from tracker.db import init_connection
from tracker.events import Event, copy_rows, parse_message

MAX_BYTES = 1 << 20


def parse_cpu(values: list[bytes], rounds: int) -> tuple[float, float]:
    """(parse_message, orjson.loads): best CPU µs per message."""
    best = {"parse": float("inf"), "loads": float("inf")}
    for _ in range(rounds):
        for name, parse in (("parse", lambda v: parse_message(v, max_bytes=MAX_BYTES)), ("loads", orjson.loads)):
            started = time.process_time()
            for value in values:
                parse(value)
            best[name] = min(best[name], (time.process_time() - started) / len(values) * 1e6)
    return best["parse"], best["loads"]


async def write_cpu(admin_url: str, events: list[Event], batch: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Per path, best (client, PostgreSQL backend) CPU µs per event, each round on a fresh database."""

    async def state(conn):
        for i in range(0, len(events), batch):
            await write_batch(conn, events[i : i + batch])

    async def copy(conn):
        for i in range(0, len(events), batch):
            async with conn.transaction():
                columns, records = copy_rows(events[i : i + batch])
                await conn.copy_records_to_table("events", records=records, columns=columns)

    hz = os.sysconf("SC_CLK_TCK")
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, path in (("write_batch", state), ("copy", copy)):
            url = await fresh_database(admin_url, prefix="bench_hot")
            conn = await asyncpg.connect(url)
            await init_connection(conn)
            await prepare_connection(conn)
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            ticks, started = _cpu_ticks(backend), time.process_time()
            await path(conn)
            client = (time.process_time() - started) / len(events) * 1e6
            server = (_cpu_ticks(backend) - ticks) / hz / len(events) * 1e6
            assert await conn.fetchval("SELECT count(*) FROM events") == len(events)
            await conn.close()
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], client), min(old[1], server))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    values = [v for _, v in dataset(args.events)]
    events = valid_events(values)
    assert all(isinstance(e, Event) for e in events)
    # As the consumer sets it up (consumer/service.py): the long-lived objects out of the
    # collector's way, and a collection every 50,000 allocations rather than 700.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    parse, loads = parse_cpu(values, args.rounds)
    with services(kafka=False) as (_, admin_url):
        write = asyncio.run(write_cpu(admin_url, events, args.batch, args.rounds))
    print(
        f"hot path, {args.events:,} events, batches of {args.batch}, best of {args.rounds} rounds, "
        "CPU microseconds per event:"
    )
    print(f"  parse_message (decode, validate, normalise): {parse:6.2f}   floor, orjson.loads alone: {loads:6.2f}")
    (wc, ws), (cc, cs) = write["write_batch"], write["copy"]
    print(f"  write_batch, this process:                   {wc:6.2f}   floor, one COPY of the events: {cc:6.2f}")
    print(f"  write_batch, its PostgreSQL backend:         {ws:6.2f}   floor, one COPY of the events: {cs:6.2f}")
    print(f"  total, parse + write (both processes):       {parse + wc + ws:6.2f}   floor: {loads + cc + cs:6.2f}")


if __name__ == "__main__":
    main()
