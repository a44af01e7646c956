"""Operators' view, proved: a real Prometheus scrapes the real consumer and API while
events flow, and evaluates every expression of the Grafana dashboard and of the alert rules."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.factories import encode, payload_tracker, tracker_event
from tests.helpers.ingest import produce

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "grafana/dashboards/tracker.json").read_text())
RULES = ROOT / "prometheus/rules.yml"
# Panels that must show data once events have flowed (not only parse).
MUST_HAVE_DATA = {
    "Ingest rate vs produce rate",
    "Consumer lag",
    "Events by service and status",
    "Elapsed per service p50 / p95 / p99 (received to outcome)",
    "Success rate per service",
    "API request rate by operation",
    "Dead letters by reason",
}


def dashboard_expressions() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel["targets"]]


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads (ours and the process collector's)."""
    return set(re.findall(r"\b((?:tracker|process)_[a-z_]+)\b", expr))


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: bin/test installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_the_panels_operators_need():
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    assert MUST_HAVE_DATA <= titles
    assert any(v["name"] == "service" for v in DASHBOARD["templating"]["list"])


async def query(session, base: str, expr: str) -> dict:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        return await response.json()


async def test_every_dashboard_and_alert_expression_evaluates_on_real_scrapes(
    settings, launch, prometheus, kafka_bootstrap
):
    await launch.consumer(settings)
    await launch.api(settings)
    now = datetime.now(UTC)
    messages = []
    for i in range(40):
        trace = f"ops-{i}"
        messages += [
            (trace.encode(), encode(payload_tracker(trace, f"svc{i % 3}", "received", now))),
            (
                trace.encode(),
                encode(
                    payload_tracker(
                        trace, f"svc{i % 3}", "error" if i % 5 == 0 else "success", now + timedelta(seconds=2)
                    )
                ),
            ),
            (
                trace.encode(),
                encode(
                    tracker_event(trace, "pipeline", "success", now + timedelta(seconds=3), trace_status="FINISHED")
                ),
            ),
        ]
    messages.append((b"bad", b"{not json"))

    async with aiohttp.ClientSession() as session:
        # Traffic for the API panels, and events over several scrapes for the rate() panels.
        for round_ in range(6):
            await produce(kafka_bootstrap, settings.topic, messages[round_::6])
            for path in ("/v1/traces/ops-1", "/v1/traces/none", "/v1/services"):
                async with session.get(settings.api_url + path) as response:
                    await response.read()
            await asyncio.sleep(1)

        deadline = time.monotonic() + 60
        while True:
            up = await query(session, prometheus, 'up{job=~"tracker-.*"}')
            ready = len(up["data"]["result"]) == 2 and all(r["value"][1] == "1" for r in up["data"]["result"])
            events = await query(session, prometheus, "sum(tracker_events_total)")
            if ready and events["data"]["result"] and float(events["data"]["result"][0]["value"][1]) >= 120:
                break
            assert time.monotonic() < deadline, f"Prometheus never saw the events: {up} {events}"
            await asyncio.sleep(1)
        # Two more scrapes of both processes, so that rate() has two points in every series.
        scrapes = 'min(count_over_time(up{job=~"tracker-.*"}[1h]))'
        seen = float((await query(session, prometheus, scrapes))["data"]["result"][0]["value"][1])
        while float((await query(session, prometheus, scrapes))["data"]["result"][0]["value"][1]) < seen + 2:
            assert time.monotonic() < deadline + 30, "Prometheus stopped scraping the tracker"
            await asyncio.sleep(0.5)

        async with session.get(f"{prometheus}/api/v1/label/__name__/values") as response:
            exported = set((await response.json())["data"])
        # Every series both processes expose reached Prometheus: both were scraped in full.
        for port_url in (f"http://127.0.0.1:{settings.consumer_port}/metrics", f"{settings.api_url}/metrics"):
            async with session.get(port_url) as response:
                text = await response.text()
            exposed = {
                sample.name
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name.startswith("tracker_")
            }
            assert exposed and not exposed - exported, (port_url, exposed - exported)

        empty = []
        for source, (title, expr) in [("dashboard", e) for e in dashboard_expressions()] + [
            ("rule", e) for e in rule_expressions()
        ]:
            # Grafana's variables, as Grafana would fill them in.
            concrete = expr.replace("$__rate_interval", "1m").replace("$service", ".*")
            result = await query(session, prometheus, concrete)
            assert result["status"] == "success", (source, title, concrete, result)
            unknown = metric_names(expr) - exported
            assert not unknown, f"{source} {title!r} names metrics nobody exports: {unknown}"
            if source == "dashboard" and title in MUST_HAVE_DATA and not result["data"]["result"]:
                empty.append((title, concrete))
        assert not empty, f"panels without data: {empty}"
