"""How fast does the API answer on a realistic data set?

1. Load N events (default 10,000,000: 1,000,000 traces of 10 events, 20
   services, spread over the last 14 days into daily partitions) with SQL
   generate_series on the server, then derive traces, per-service state and
   rollups from them with the same definitions the consumer maintains; then
   settle (VACUUM (ANALYZE), CHECKPOINT) before the first request.
2. Start the API (`python -m tracker.api`, one uvicorn worker) and drive it over
   loopback with wrk from a second process: per endpoint, requests/s and
   latency p50/p99. Targets: trace lookup p99 <= 10 ms and >= 1,500 req/s;
   filtered search p99 <= 50 ms; rollups over 24 h p99 <= 100 ms; API RSS <= 200 MB.
   The web pages (tracker/web): the trace page of a trace of 1,000 events and a search page,
   server-rendered; target p99 <= 50 ms each.
   The trace lookup again with TRACKER_AUTH=on (a read token; one bound to tenants), beside
   the same lookup with auth off, in the same run: the target holds with auth on too.
3. Baseline on the same data: the Payload Tracker way (exact COUNT + OFFSET
   paging) against ours (keyset), the same queries issued directly with asyncpg.

Usage: python -m bench.query [--traces 1000000] [--duration 10] [--keep DIR]
--keep DIR keeps the loaded PostgreSQL in DIR and reuses it on the next run.
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from bench.common import rss_peak_bytes
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import LocalPostgres, create_database, database_url
from tracker.maintenance import create_partition, existing_partitions, partition_name
from tracker.migrate import migrate
from tracker.queries.traces import TRACE_DOCUMENT
from tracker.settings import Settings
from tracker.tenants import Tenants
from tracker.tokens import create_token

ROOT = Path(__file__).resolve().parents[1]
DAYS = 14

LOAD_EVENTS = """
INSERT INTO events (event_id, trace_id, service, status, failed, ts, source, account, org_id, inventory_id,
                    system_id, message, format, received_at, trace_status)
SELECT md5(t::text || ':' || e::text),
       'trace-' || t,
       -- five services per trace, from a per-trace random offset: every service sees failures
       'service-' || lpad(((abs(hashint4(t)) + e / 2) % 20)::text, 2, '0'),
       CASE WHEN e % 2 = 0 THEN 'received' WHEN t % 10 = 0 AND e = 9 THEN 'error' ELSE 'success' END,
       t % 10 = 0 AND e = 9,
       $1::timestamptz + (t::float8 / $2) * interval '14 days' + e * interval '700 milliseconds'
           + (t % 13) * e * interval '90 milliseconds',
       'inventory',
       lpad((t % 50000)::text, 7, '0'),
       (t % 20000)::text,
       md5('inv' || t),
       md5('sys' || t),
       'step ' || e || ' of trace ' || t,
       'payload_tracker',
       $1::timestamptz + (t::float8 / $2) * interval '14 days' + e * interval '700 milliseconds',
       CASE WHEN e = 9 THEN 'FINISHED' END
FROM generate_series($3::int, $4::int) AS t, generate_series(0, 9) AS e
"""

DERIVE = [
    """INSERT INTO trace_services (trace_id, service, first_at, last_at, event_count, latest_at, latest_event_id,
                                   latest_status, latest_failed, start_at, outcome_at, outcome_event_id, outcome_failed)
       SELECT trace_id, service, min(ts), max(ts), count(*),
              (array_agg(ts ORDER BY ts DESC, event_id DESC))[1],
              (array_agg(event_id ORDER BY ts DESC, event_id DESC))[1],
              (array_agg(status ORDER BY ts DESC, event_id DESC))[1],
              (array_agg(failed ORDER BY ts DESC, event_id DESC))[1],
              min(ts),
              (array_agg(ts ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1],
              (array_agg(event_id ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1],
              (array_agg(failed ORDER BY ts, event_id) FILTER (WHERE status = 'success' OR failed))[1]
       FROM events GROUP BY trace_id, service""",
    """INSERT INTO traces (trace_id, first_at, last_at, active_hour, event_count, error_count, done, finish_at,
                           finish_event_id, finish_failed, status, created_at, account, org_id, inventory_id,
                           system_id, source)
       SELECT trace_id, min(ts), max(ts), date_trunc('hour', max(ts), 'UTC'), count(*), count(*) FILTER (WHERE failed),
              bool_or(trace_status = 'FINISHED'),
              max(ts) FILTER (WHERE trace_status = 'FINISHED'),
              (array_agg(event_id ORDER BY ts DESC) FILTER (WHERE trace_status = 'FINISHED'))[1],
              bool_or(failed) FILTER (WHERE trace_status = 'FINISHED'),
              CASE WHEN bool_or(failed) FILTER (WHERE trace_status = 'FINISHED') THEN 'failed' ELSE 'success' END,
              min(ts), min(account), min(org_id), min(inventory_id), min(system_id), min(source)
       FROM events GROUP BY trace_id""",
    # Each hour's 60 per-minute counts (migration 007), zero for a minute without events.
    """INSERT INTO rollup_counts_hour (bucket, service, status, events, minutes)
       SELECT k.hour, k.service, k.status, sum(coalesce(c.n, 0)),
              array_agg(coalesce(c.n, 0)::integer ORDER BY g.i)
       FROM (SELECT DISTINCT date_trunc('hour', ts) AS hour, service, status FROM events) k
       CROSS JOIN generate_series(0, 59) AS g(i)
       LEFT JOIN (SELECT date_trunc('minute', ts) AS minute, service, status, count(*) AS n
                  FROM events GROUP BY 1, 2, 3) c
              ON c.minute = k.hour + g.i * interval '1 minute' AND c.service = k.service AND c.status = k.status
       GROUP BY 1, 2, 3""",
    """INSERT INTO rollup_elapsed (bucket, kind, service, failed, bin, n)
       SELECT date_trunc('hour', outcome_at), 'service', service, outcome_failed,
              tracker_elapsed_bin(outcome_at - start_at), count(*)
       FROM trace_services WHERE outcome_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5""",
    """INSERT INTO rollup_elapsed (bucket, kind, service, failed, bin, n)
       SELECT date_trunc('hour', finish_at), 'trace', '', finish_failed, tracker_elapsed_bin(finish_at - first_at),
              count(*)
       FROM traces WHERE done GROUP BY 1, 2, 3, 4, 5""",
]


async def load(url: str, traces: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        # The trace of the pages' figure (add_big_trace) is not part of the generated set.
        loaded = await conn.fetchval("SELECT count(*) FROM traces WHERE trace_id <> $1", BIG_TRACE)
        if loaded == traces:
            print(f"data set already loaded ({traces:,} traces)", flush=True)
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM rollup_counts_hour)"):
                await conn.execute(DERIVE[2])  # loaded before the hourly rollup existed
            return
        if loaded:
            raise SystemExit("the database holds another data set; use a new --keep folder")
        today = datetime.now(UTC).date()
        existing = await existing_partitions(conn)
        for d in range(-DAYS - 1, 2):
            day = today + timedelta(days=d)
            if partition_name(day) not in existing:
                await create_partition(conn, day)
        start = datetime.now(UTC) - timedelta(days=DAYS)
        began = time.perf_counter()
        chunk = 100_000
        for first in range(1, traces + 1, chunk):
            await conn.execute(LOAD_EVENTS, start, traces, first, min(first + chunk - 1, traces))
            print(f"\r  events: {min(first + chunk - 1, traces) * 10:,}", end="", flush=True)
        print(f"  ({time.perf_counter() - began:.0f} s)", flush=True)
        for sql in DERIVE:
            began = time.perf_counter()
            await conn.execute(sql)
            print(f"  derived {sql.split()[2]} ({time.perf_counter() - began:.0f} s)", flush=True)
        assert "rollup_counts_hour" in DERIVE[2]
        await conn.execute("UPDATE traces SET created_at = first_at")  # as if ingested live
    finally:
        await conn.close()


BIG_TRACE = "bench-page-trace"


async def add_big_trace(url: str) -> None:
    """One trace of 1,000 events (the data set's have 10), for the trace page's figure; written
    by the consumer's own write path, so its state rows are what the consumer makes. Idempotent."""
    from consumer.store import prepare_connection, write_batch
    from tracker.db import init_connection
    from tracker.events import Event, parse_message

    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT event_count FROM traces WHERE trace_id = $1", BIG_TRACE) == 1000:
            return
        await init_connection(conn)
        await prepare_connection(conn)
        start = datetime.now(UTC) - timedelta(hours=2)
        events = []
        for i in range(1000):
            doc = {
                "trace_id": BIG_TRACE,
                "event_id": f"{BIG_TRACE}-{i}",
                "service": f"service-{i % 20:02d}",
                "status": "error" if i % 97 == 0 else "success" if i % 2 else "received",
                "timestamp": (start + timedelta(seconds=i)).isoformat(),
                "message": f"step {i}",
                "body": {"files": [f"s3://bucket/{i}/{j}" for j in range(3)]},
            }
            parsed = parse_message(orjson.dumps(doc), max_bytes=1 << 20)
            assert isinstance(parsed, Event), parsed
            events.append(parsed)
        await write_batch(conn, events)
    finally:
        await conn.close()


def start_api(url: str, workers: int, state: Path, auth: str = "off") -> tuple[subprocess.Popen, str]:
    """The API as deployed (``python -m tracker.api --workers N``), ready; and its base URL.
    With auth on, the limits are the defaults but the rate, which one token's load would pass."""
    port = free_port()
    settings = Settings.from_env(
        {}, database_url=url, api_port=port, log_level="WARNING", auth=auth, rate_limit=1_000_000, rate_burst=1_000_000
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "tracker.api", "--workers", str(workers)],
        env=settings.child_environ(),
        cwd=ROOT,
        stdout=open(state / "api.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            subprocess.run(["curl", "-sf", f"{base}/readyz"], check=True, capture_output=True)
            break
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    return api, base


def lua_paths(paths: list[str], token: str | None = None) -> str:
    quoted = ",".join('"' + p.replace('"', '\\"') + '"' for p in paths)
    headers = f'{{["Authorization"] = "Bearer {token}"}}' if token else "nil"
    return (
        f"local paths = {{{quoted}}}\n"
        f"local headers = {headers}\n"
        "math.randomseed(os.time())\n"
        "request = function() return wrk.format('GET', paths[math.random(#paths)], headers) end\n"
    )


def wrk(
    base_url: str, paths: list[str], duration: int, connections: int, workdir: Path, token: str | None = None
) -> dict:
    script = workdir / "paths.lua"
    script.write_text(lua_paths(paths, token))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), base_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    rps = float(found.group(1))
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0}


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(\w+)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


async def baseline(url: str, traces: int) -> list[tuple[str, float, float]]:
    """The Payload Tracker way vs ours, same data, queries issued directly."""
    conn = await asyncpg.connect(url)
    rng = random.Random(1)
    results = []

    async def timed(sql: str, *args) -> float:
        began = time.perf_counter()
        await conn.fetch(sql, *args)
        return (time.perf_counter() - began) * 1000

    async def series(make) -> list[float]:
        out = []
        for _ in range(30):
            total = 0.0
            for sql, args in make():
                total += await timed(sql, *args)
            out.append(total)
        return out

    # 1. one trace: ours = state + services + errors; PT = COUNT of its statuses + a page with OFFSET.
    def ours_trace():
        t = f"trace-{rng.randrange(1, traces)}"
        return [(TRACE_DOCUMENT, (t,))]

    def pt_trace():
        t = f"trace-{rng.randrange(1, traces)}"
        return [
            ("SELECT count(*) FROM events WHERE trace_id = $1", (t,)),
            ("SELECT * FROM events WHERE trace_id = $1 ORDER BY ts DESC OFFSET 0 LIMIT 10", (t,)),
        ]

    results.append(
        ("trace lookup", statistics.median(await series(pt_trace)), statistics.median(await series(ours_trace)))
    )

    # 2. page 100 of one service's statuses, 50 per page: PT = exact COUNT + OFFSET; ours = keyset.
    row = await conn.fetchrow(
        "SELECT ts, event_id FROM events WHERE service = 'service-07' "
        "ORDER BY ts DESC, event_id DESC OFFSET 4950 LIMIT 1"
    )
    assert row is not None, "the data set has fewer than 4,951 events of service-07"

    def pt_page():
        return [
            ("SELECT count(*) FROM events WHERE service = $1", ("service-07",)),
            (
                "SELECT * FROM events WHERE service = $1 ORDER BY ts DESC, event_id DESC OFFSET 4950 LIMIT 50",
                ("service-07",),
            ),
        ]

    def ours_page():
        return [
            (
                "SELECT * FROM events WHERE service = $1 AND (ts, event_id) < ($2, $3) "
                "ORDER BY ts DESC, event_id DESC LIMIT 51",
                ("service-07", row["ts"], row["event_id"]),
            )
        ]

    results.append(
        (
            "page 100 of a service's statuses",
            statistics.median(await series(pt_page)),
            statistics.median(await series(ours_page)),
        )
    )
    await conn.close()
    return results


async def _tokens(url: str, accounts: list[str]) -> tuple[str, str]:
    """A read token, and a read token bound to ``accounts``."""
    conn = await asyncpg.connect(url)
    try:
        _, read = await create_token(conn, "bench read", ["read"])
        _, bound = await create_token(conn, "bench tenant", ["read"], tenants=Tenants(account=tuple(accounts)))
    finally:
        await conn.close()
    return read, bound


def auth_lookup(url: str, state: Path, args, lookup: list[str], off: dict) -> None:
    """The trace lookup with TRACKER_AUTH=on, beside the run with it off (``off``, same run).
    A bound token asks for traces of its 20 accounts (account = t mod 50,000 in this data)."""
    accounts = [f"{a:07d}" for a in range(100, 50000, 2495)][:20]
    mine = [f"/v1/traces/trace-{int(a) + 50000 * k}" for a in accounts for k in range(1, 20)]
    read, bound = asyncio.run(_tokens(url, accounts))
    api, base = start_api(url, 1, state, auth="on")
    try:
        results = []
        for label, paths, token in (("read token", lookup, read), ("token bound to 20 accounts", mine, bound)):
            wrk(base, paths, 3, args.connections, state, token)
            results.append((label, wrk(base, paths, args.duration, args.connections, state, token)))
    finally:
        api.terminate()
        api.wait(30)
    print(f"\ntrace lookup, TRACKER_AUTH off and on (same run, one worker, {args.connections} connections):")
    for label, r in (("auth off", off), *((f"auth on, {label}", r) for label, r in results)):
        verdict = "met" if r["p99"] <= 10 and r["rps"] >= 1500 else "MISSED"
        errors = f"  ({r['non2xx']} non-2xx!)" if r["non2xx"] else ""
        print(
            f"  {label:<36} {r['rps']:>8.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms"
            f"   (p99 <= 10 ms and >= 1,500 req/s: {verdict}){errors}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=1_000_000, help="10 events each")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per endpoint")
    # 4 concurrent clients: on 2 cores shared by wrk, the API and PostgreSQL, more
    # connections only queue (same req/s, longer tails).
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep the loaded PostgreSQL here and reuse it")
    parser.add_argument("--explain", action="store_true", help="print the plan of every API query at the end")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench/query needs wrk: apt-get install wrk")

    state = args.keep or Path(tempfile.mkdtemp(prefix="tracker-bench-query-"))
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    pg = LocalPostgres(state / "postgres", durable=True).start()
    api = None
    try:
        url = database_url(pg.url, "bench_query")

        async def prepare():
            await create_database(pg.url, "bench_query", if_missing=True)
            await migrate(url)
            await load(url, args.traces)
            c = await asyncpg.connect(url)
            try:
                # Measured settled, loaded now or reused: statistics and visibility map up to date
                # and nothing left dirty for a checkpoint to write mid-measurement (a first endpoint
                # measured right after the load once printed p99 353 ms).
                began = time.perf_counter()
                await c.execute("VACUUM (ANALYZE)")
                await c.execute("CHECKPOINT")
                print(f"  settled: VACUUM (ANALYZE), CHECKPOINT ({time.perf_counter() - began:.0f} s)", flush=True)
                return await c.fetchval("SELECT pg_size_pretty(pg_database_size('bench_query'))")
            finally:
                await c.close()

        print(f"data set: {args.traces * 10:,} events, {args.traces:,} traces, 20 services, {DAYS} days", flush=True)
        size = asyncio.run(prepare())
        asyncio.run(add_big_trace(url))
        print(f"  database size {size}", flush=True)

        api, base = start_api(url, 1, state)

        rng = random.Random(7)
        ids = [f"trace-{rng.randrange(1, args.traces)}" for _ in range(2000)]
        services = [f"service-{i:02d}" for i in range(20)]
        accounts = [f"{rng.randrange(50000):07d}" for _ in range(200)]
        cases = [
            ("GET /v1/traces/{id}", [f"/v1/traces/{t}" for t in ids], ("p99 <= 10 ms", 10), 1500),
            ("GET /v1/traces/{id}/events", [f"/v1/traces/{t}/events" for t in ids], None, None),
            (
                "search: service + status, 24h",
                [f"/v1/traces?service={s}&status=failed&lookback=24h" for s in services],
                ("p99 <= 50 ms", 50),
                None,
            ),
            ("search: account", [f"/v1/traces?account={a}" for a in accounts], ("p99 <= 50 ms", 50), None),
            ("search: newest, 1h window", ["/v1/traces?lookback=1h&limit=50"], ("p99 <= 50 ms", 50), None),
            (
                "events: service, 1h",
                [f"/v1/events?service={s}&lookback=1h" for s in services],
                ("p99 <= 50 ms", 50),
                None,
            ),
            ("rollup: counts 24h by hour", ["/v1/stats/counts?lookback=24h&bucket=1h"], ("p99 <= 100 ms", 100), None),
            ("rollup: elapsed percentiles 24h", ["/v1/stats/elapsed?lookback=24h"], ("p99 <= 100 ms", 100), None),
            ("rollup: services 24h", ["/v1/services?lookback=24h"], ("p99 <= 100 ms", 100), None),
            ("rollup: success rate 24h", ["/v1/stats/success-rate?lookback=24h"], ("p99 <= 100 ms", 100), None),
            ("page: trace of 1,000 events (1 conn)", [f"/traces/{BIG_TRACE}"], ("p99 <= 50 ms", 50), None),
            (
                "page: search, failed, 24h (1 conn)",
                [f"/?service={s}&status=failed&lookback=24h" for s in services],
                ("p99 <= 50 ms", 50),
                None,
            ),
        ]
        print(
            f"\nwrk, 1 thread, {args.connections} connections, {args.duration} s per endpoint after a 3 s warm-up, "
            "one API worker"
        )
        print(f"  {'endpoint':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  target")
        measured: dict[str, dict] = {}
        for name, paths, latency_target, rps_target in cases:
            # The pages' target is their server time: one connection, so no request waits behind another.
            connections = 1 if name.startswith("page:") else args.connections
            wrk(base, paths, 3, connections, state)  # warm-up, not counted: caches and pool
            r = wrk(base, paths, args.duration, connections, state)
            measured[name] = r
            verdicts = []
            if latency_target:
                verdicts.append(f"{latency_target[0]}: {'met' if r['p99'] <= latency_target[1] else 'MISSED'}")
            if rps_target:
                verdicts.append(f">= {rps_target} req/s: {'met' if r['rps'] >= rps_target else 'MISSED'}")
            errors = f"  ({r['non2xx']} non-2xx!)" if r["non2xx"] else ""
            print(
                f"  {name:<34} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}  {'; '.join(verdicts)}{errors}",
                flush=True,
            )
        rss = rss_peak_bytes(api.pid)
        print(f"  API peak RSS: {rss / 2**20:.0f} MiB (target <= 200 MB: {'met' if rss <= 200e6 else 'MISSED'})")
        api.terminate()
        api.wait(30)

        # The same lookup with two worker processes (tracker-api --workers 2), on the same 2 cores
        # that wrk and PostgreSQL share.
        api, base = start_api(url, 2, state)
        lookup = cases[0][1]
        wrk(base, lookup, 3, args.connections, state)
        one = measured[cases[0][0]]
        two = wrk(base, lookup, args.duration, args.connections, state)
        print(f"\ntrace lookup by API workers (same run, same {args.connections} connections):")
        for workers, r in ((1, one), (2, two)):
            print(
                f"  {workers} worker(s): {r['rps']:>8.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms",
                flush=True,
            )

        api.terminate()
        api.wait(30)
        api = None
        auth_lookup(url, state, args, lookup, one)

        print("\nbaseline, same data, queries issued directly (median of 30, ms):")
        for name, pt, ours in asyncio.run(baseline(url, args.traces)):
            print(f"  {name:<34} Payload Tracker way (COUNT + OFFSET) {pt:8.2f}   ours {ours:6.2f}   x{pt / ours:.1f}")
        if args.explain:
            from bench.explain import explain

            print("\nquery plans (EXPLAIN ANALYZE) on this data:")
            asyncio.run(explain(url, trace_id=ids[0], account=accounts[0]))
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        pg.stop()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
