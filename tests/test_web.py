"""The web pages in a real browser (headless Chromium from Debian, driven by Selenium) against
the real API process, PostgreSQL and, for the live trace page, Kafka and the consumer.
Screenshots of each page go to TRACKER_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import shutil
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import encode, events_of, payload_tracker, tracker_event
from tests.helpers.ingest import produce
from tracker.db import init_connection
from tracker.tenants import Tenants
from tracker.tokens import create_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TRACES = 620  # more than one page of the search (50) and of the CSV's walk (500)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("TRACKER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def stack(settings, db, launch):
    """Traces of two accounts (one of each ten failed), tokens, and the API with auth on."""
    await init_connection(db)
    await prepare_connection(db)
    at = datetime.now(UTC) - timedelta(minutes=30)
    docs = []
    for i in range(TRACES):
        account = "acct-web" if i % 2 == 0 else "acct-other"
        trace = f"web-{i:04d}"
        when = at + timedelta(seconds=i)
        docs.append(payload_tracker(trace, "ingress", "received", when, account=account))
        docs.append(payload_tracker(trace, "ingress", "success", when + timedelta(milliseconds=300), account=account))
        failed = i % 10 == 0
        docs.append(
            payload_tracker(
                trace,
                "puptoo",
                "error" if failed else "success",
                when + timedelta(seconds=1),
                status_msg="archive is corrupt" if failed else None,
            )
        )
    # A trace still running, for the live page; and an account that looks like a formula.
    docs.append(payload_tracker("web-live", "ingress", "received", at, account="acct-web"))
    docs.append(payload_tracker("web-formula", "ingress", "received", at, account="=HYPERLINK(1)"))
    await write_batch(db, events_of([{k: v for k, v in d.items() if v is not None} for d in docs]))
    _, reader = await create_token(db, "web reader", ["read"])
    _, tenant = await create_token(db, "web tenant", ["read"], tenants=Tenants(account=("acct-web",)))
    _, admin = await create_token(db, "web admin", ["admin"])
    web = dataclasses.replace(settings, auth="on", log_level="INFO")
    api = await launch.api(web)
    return web, api, {"reader": reader, "tenant": tenant, "admin": admin}


def sign_in(browser, base: str, token: str, shots: Path | None = None) -> None:
    browser.get(base + "/")
    assert "/signin" in browser.current_url  # no cookie yet: to the sign-in page
    if shots is not None:
        browser.save_screenshot(str(shots / "signin.png"))
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "results"))


def text_of(browser, css: str) -> str:
    """An element's text on a page that replaces its live part every 2 s: found and read again
    if the refresh swapped it in between."""
    for _ in range(20):
        try:
            return browser.find_element(By.CSS_SELECTOR, css).text
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept changing under us")


def trace_links(browser) -> list[str]:
    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#results a.trace-link")]


async def test_search_with_filters_and_paging_then_a_trace_with_its_timeline_and_error(stack, browser, shots):
    settings, _, tokens = stack
    base = settings.api_url
    sign_in(browser, base, tokens["reader"], shots)
    browser.save_screenshot(str(shots / "search.png"))
    first = trace_links(browser)
    # Newest first (one batch wrote them all: same first-seen time, then trace id descending).
    numbered = [t for t in first if t[4:].isdigit()]
    assert len(first) == 50 and numbered[:2] == [f"web-{TRACES - 1:04d}", f"web-{TRACES - 2:04d}"]
    browser.find_element(By.ID, "more").click()
    second = trace_links(browser)
    assert len(second) == 50 and not set(first) & set(second)
    # Filters live in the URL: failed traces of one account.
    browser.get(base + "/?status=failed&account=acct-web&lookback=24h")
    failed = trace_links(browser)
    assert failed == [f"web-{i:04d}" for i in range(TRACES - 10, -1, -10)][:50]  # one in ten failed
    # One trace: its header, its timeline (one bar per service), its error.
    browser.find_element(By.LINK_TEXT, "web-0610").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "timeline"))
    assert browser.find_element(By.ID, "status").text == "failed"
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline .row")
    assert [b.find_element(By.CSS_SELECTOR, ".name").text for b in bars] == ["ingress", "puptoo"]
    assert "failed" in bars[1].find_element(By.CSS_SELECTOR, ".span").get_attribute("class")
    assert "archive is corrupt" in browser.find_element(By.ID, "errors").text
    browser.save_screenshot(str(shots / "trace.png"))
    # Its other views are the API's JSON routes: the sign-in cookie opens them in the same browser.
    browser.find_element(By.LINK_TEXT, "Status API").click()
    assert '"trace_event_status"' in browser.page_source or "trace_event_status" in browser.page_source
    browser.back()
    # A bad filter and an unknown trace: a readable page, not a stack trace.
    browser.get(base + "/?min_duration=soon")
    assert "min_duration" in browser.find_element(By.ID, "problem").text
    browser.get(base + "/traces/no-such-trace")
    assert "No event has been seen" in browser.find_element(By.ID, "problem").text


async def test_a_new_event_appears_on_the_open_trace_page_without_a_reload(stack, browser, launch, kafka_bootstrap):
    settings, _, tokens = stack
    await launch.consumer(settings)
    sign_in(browser, settings.api_url, tokens["reader"])
    browser.get(settings.api_url + "/traces/web-live")
    assert text_of(browser, "#event-count") == "1"
    browser.execute_script("window.notReloaded = true")
    later = datetime.now(UTC)
    await produce(
        kafka_bootstrap,
        settings.topic,
        [
            (
                b"web-live",
                encode(
                    tracker_event(
                        "web-live",
                        "puptoo",
                        "error",
                        later,
                        message="late failure",
                        body={"files_incoming": ["s3://in/archive.tar"], "files_outgoing": []},
                    )
                ),
            )
        ],
    )
    deadline = time.monotonic() + 30
    while text_of(browser, "#event-count") != "2":
        assert time.monotonic() < deadline, "the page never showed the new event"
        time.sleep(0.3)
    assert browser.execute_script("return window.notReloaded") is True
    assert "late failure" in text_of(browser, "#history")
    # The lineage expands in place, and stays open across the refreshes that follow.
    # The refresh may swap the table between finding the summary and clicking it: ask again.
    WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#history details summary").click() or True
    )
    assert "s3://in/archive.tar" in text_of(browser, "details[open] .lineage")
    time.sleep(4.5)  # two refreshes (the trace is not done)
    assert browser.find_elements(By.CSS_SELECTOR, "details[open] .lineage")
    assert browser.execute_script("return window.notReloaded") is True


async def test_the_csv_export_holds_every_matching_trace_with_formulas_neutralised(stack, browser):
    settings, _, tokens = stack
    sign_in(browser, settings.api_url, tokens["reader"])
    cookie = browser.get_cookie("tracker_token")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    request = urllib.request.Request(
        settings.api_url + "/traces.csv?lookback=24h", headers={"Cookie": f"tracker_token={cookie['value']}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(rows) == TRACES + 2 and len({r["trace_id"] for r in rows}) == TRACES + 2
    formula = next(r for r in rows if r["trace_id"] == "web-formula")
    assert formula["account"] == "'=HYPERLINK(1)"


async def test_a_token_bound_to_an_account_sees_only_its_traces(stack, browser, shots):
    settings, _, tokens = stack
    sign_in(browser, settings.api_url, tokens["tenant"])
    seen = trace_links(browser)
    assert seen and all(int(t.split("-")[1]) % 2 == 0 for t in seen if t != "web-live")
    browser.get(settings.api_url + "/traces/web-0001")  # the other account's
    assert "No event has been seen" in browser.find_element(By.ID, "problem").text
    browser.save_screenshot(str(shots / "unknown.png"))


async def test_events_now_and_rejected_pages_show_the_platform_to_an_admin(
    stack, browser, launch, kafka_bootstrap, shots
):
    settings, _, tokens = stack
    await launch.consumer(settings)
    # A message the consumer must reject, and a counted event for the rollups.
    now = datetime.now(UTC)
    await produce(
        kafka_bootstrap,
        settings.topic,
        [(b"junk", b"{not json"), (b"web-now", encode(payload_tracker("web-now", "ingress", "error", now)))],
    )
    sign_in(browser, settings.api_url, tokens["admin"])
    deadline = time.monotonic() + 30
    while True:
        browser.get(settings.api_url + "/rejected?reason=not_json")
        rows = browser.find_elements(By.CSS_SELECTOR, "#rejected tbody tr")
        if "not_json" in rows[0].text:
            break
        assert time.monotonic() < deadline, "the rejected message never showed"
        time.sleep(0.5)
    assert "{not json" in rows[0].text and f"{settings.topic}[" in rows[0].text
    browser.save_screenshot(str(shots / "rejected.png"))
    browser.get(settings.api_url + "/now?window=15m")
    services = browser.find_element(By.ID, "services").text
    assert "ingress" in services
    assert "web-now" in browser.find_element(By.ID, "failed").text
    assert browser.find_elements(By.CSS_SELECTOR, ".chart rect.events")
    browser.save_screenshot(str(shots / "now.png"))
    browser.get(settings.api_url + "/events?service=puptoo&status=error&lookback=24h")
    events = browser.find_elements(By.CSS_SELECTOR, "#results a.trace-link")
    assert events and {e.text for e in events} <= {f"web-{i:04d}" for i in range(0, TRACES, 10)}
    browser.save_screenshot(str(shots / "events.png"))
    # Now and Rejected are platform-wide: a read token is told so, not shown them.
    browser.find_element(By.CSS_SELECTOR, ".signout button").click()
    sign_in(browser, settings.api_url, tokens["reader"])
    browser.get(settings.api_url + "/now")
    assert "admin" in browser.find_element(By.ID, "problem").text


async def test_a_database_that_stops_answering_is_a_readable_page_not_a_stack_trace(settings, db, local_postgres):
    """PostgreSQL stops under the API (a restart, a failover): the page says the database is
    not answering (503); once it is back, pages are served again."""
    if local_postgres is None:
        pytest.skip("DATABASE_URL names a server this suite cannot stop")
    with api_client(settings) as client:
        assert client.get("/").status_code == 200
        await db.close()
        await asyncio.to_thread(local_postgres.stop)
        try:
            answer = client.get("/?lookback=1h")
        finally:
            await asyncio.to_thread(local_postgres.restart)
        assert answer.status_code == 503, answer.text[:300]
        assert "The database is not answering" in answer.text and "Traceback" not in answer.text
        assert client.get("/").status_code == 200
