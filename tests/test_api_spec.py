"""Property-based run of the whole OpenAPI document (schemathesis) against the real API
process and a database with data: no 5xx, every response conforms to the spec."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from consumer.store import prepare_connection, write_batch
from tests.helpers.factories import events_of, pipeline_trace, status_api
from tests.plugins.processes import Launcher
from tracker.api.params import EPOCH, duration
from tracker.api.problems import ProblemException
from tracker.db import init_connection
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import create_database, drop_database
from tracker.settings import Settings
from tracker.tokens import create_token
from tracker.topics import ensure_topics

SPEC = Path(__file__).resolve().parents[1] / "swagger" / "openapi.yaml"
schema = schemathesis.openapi.from_path(str(SPEC))


def breaks_a_rule_stated_in_words(path: str, query: dict) -> bool:
    """The requests the document rules out in words, because OpenAPI 3.0 cannot say them
    as schema (each is answered 400 with that sentence, tested elsewhere): a cursor is one
    a previous page returned, never made up; `since` and `lookback` are not given
    together; `since` is not after `until`; `lookback` / `bucket` is at most 10,000
    buckets. Everything else the schema allows must be accepted (positive_data_acceptance)."""
    if not query:
        return False
    if "cursor" in query or ("since" in query and ("lookback" in query or "until" in query)):
        return True
    if path == "/v1/stats/counts":
        try:
            window = min(duration(str(query.get("lookback", "24h")), "lookback"), datetime.now(UTC) - EPOCH)
            return window / duration(str(query.get("bucket", "1h")), "bucket") > 10_000
        except (ProblemException, ZeroDivisionError):
            return False  # not a duration: the schema's own business, not this rule's
    return False


def filter_query(ctx, query):
    return not breaks_a_rule_stated_in_words(ctx.operation.path, query or {})


@pytest.fixture(scope="module")
async def spec_api(postgres_admin_url, template_database, tmp_path_factory, kafka_bootstrap):
    """One API process for the whole module, on a database with a few hundred events."""
    name = f"tracker_spec_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres_admin_url, name, template=template_database)
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    await prepare_connection(conn)
    rng = random.Random(5)
    docs = []
    for i in range(40):
        docs += pipeline_trace(f"spec-{i}", rng, fail=i % 4 == 0)
        docs.append({**status_api(f"spec-{i}", "copy", i % 3 != 0, datetime.now(UTC)), "s3_path": f"s3://b/{i % 7}"})
    await write_batch(conn, events_of(docs))
    # Auth on, and every case sent with an admin token: schemathesis's ignored_auth check
    # then also proves that each operation the spec protects refuses a request without one.
    _, token = await create_token(conn, "schemathesis", ["admin"])
    await conn.close()
    port = free_port()
    topic = f"test.spec.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [topic], partitions=1)
    api_settings = Settings.from_env(
        {},
        database_url=url,
        api_port=port,
        api_url=f"http://127.0.0.1:{port}",
        kafka_bootstrap_servers=kafka_bootstrap,
        topic=topic,
        api_validate_responses=True,
        log_level="WARNING",
        auth="on",
        # Hundreds of requests a second with one token: the rate limit (tested in
        # test_api_auth.py) would answer some of them 429 and fail positive_data_acceptance.
        rate_limit=0,
    )
    launcher = Launcher(tmp_path_factory.mktemp("spec"))
    process = await launcher.api(api_settings)
    yield api_settings.api_url, process, {"Authorization": f"Bearer {token}"}
    launcher.stop_all()
    await drop_database(postgres_admin_url, name)


@schema.hooks.apply(filter_query)
@schema.parametrize()
@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_to_the_spec(case, spec_api):
    base_url, process, headers = spec_api
    # Every check, positive_data_acceptance included: whatever the document says is valid
    # the server accepts, so a client generated from it sends only what the server takes.
    # The coverage phase does not run filter hooks: its combinations that break a rule
    # stated in words are still sent (and must not 5xx), but need not be accepted.
    excluded = (
        [positive_data_acceptance] if breaks_a_rule_stated_in_words(case.operation.path, case.query or {}) else []
    )
    # A negative case in the headers is one without the Authorization header the spec requires
    # (it declares no other): adding the token would make it a valid request that schemathesis
    # then expects refused.
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        headers = {}
    try:
        case.call_and_validate(base_url=base_url, headers=headers, excluded_checks=excluded)
    except Exception:
        print("API log tail:\n" + process.log()[-3000:])
        raise
