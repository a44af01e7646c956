"""Property-based run of the whole OpenAPI document (schemathesis) against the real API
process and a database with data: no 5xx, every response conforms to the spec."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.checks import positive_data_acceptance

from consumer.store import prepare_connection, write_batch
from tests.factories import encode, pipeline_trace, status_api
from tests.plugins.processes import Launcher
from tracker.db import init_connection
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import create_database, drop_database
from tracker.events import parse_message
from tracker.settings import Settings
from tracker.topics import ensure_topics

SPEC = Path(__file__).resolve().parents[1] / "swagger" / "openapi.yaml"
schema = schemathesis.openapi.from_path(str(SPEC))


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
        docs.append({**status_api(f"spec-{i}", "copy", i % 3 != 0, datetime.now(timezone.utc)),
                     "s3_path": f"s3://b/{i % 7}"})
    await write_batch(conn, [parse_message(encode(d), max_bytes=1 << 20) for d in docs])
    await conn.close()
    port = free_port()
    topic = f"test.spec.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [topic], partitions=1)
    api_settings = Settings.from_env({}, database_url=url, api_port=port, api_url=f"http://127.0.0.1:{port}",
                                     kafka_bootstrap_servers=kafka_bootstrap, topic=topic,
                                     api_validate_responses=True, log_level="WARNING")
    launcher = Launcher(tmp_path_factory.mktemp("spec"))
    process = await launcher.api(api_settings)
    yield api_settings.api_url, process
    launcher.stop_all()
    await drop_database(postgres_admin_url, name)


@schema.parametrize()
@hypothesis_settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])
def test_every_operation_conforms_to_the_spec(case, spec_api):
    base_url, process = spec_api
    # Inputs the schema cannot express as invalid (since after until, since with lookback,
    # a path that is not base64) are valid for the schema yet rejected with a 400 that
    # says why; so "valid input must be accepted" is not a property of this API.
    try:
        case.call_and_validate(base_url=base_url, excluded_checks=[positive_data_acceptance])
    except Exception:
        print("API log tail:\n" + process.log()[-3000:])
        raise
