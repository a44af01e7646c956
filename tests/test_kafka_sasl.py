"""Kafka with SASL (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*): a broker of the harness that asks
for credentials, the consumer, `tracker send` and `tracker topics` with the right ones, and a
clear, prompt failure with wrong ones."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime

import pytest

from tests.helpers.factories import encode, payload_tracker
from tests.helpers.ingest import wait_stored
from tracker.cli import main as cli
from tracker.devservices.kafka import LocalKafka
from tracker.producer import send_one

PASSWORD = "right-password-" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory, settings_defaults):
    broker = LocalKafka(
        tmp_path_factory.mktemp("sasl-kafka"),
        heap="384m",
        java_home=settings_defaults.java_home,
        cache_home=settings_defaults.cache_home,
        sasl_users={"tracker": PASSWORD},
    ).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def settings_defaults():
    from tracker.settings import Settings

    return Settings.from_env()


def on_sasl(settings, broker: LocalKafka, mechanism: str, password: str):
    return dataclasses.replace(
        settings,
        kafka_bootstrap_servers=broker.sasl_bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="tracker",
        kafka_sasl_password=password,
        topic=f"sasl.{uuid.uuid4().hex[:8]}",
        dlq_topic=f"sasl.{uuid.uuid4().hex[:8]}.dlq",
        log_level="INFO",
    )


async def test_the_consumer_and_the_cli_work_with_the_right_credentials(settings, sasl_broker, launch, db, monkeypatch):
    scram = on_sasl(settings, sasl_broker, "SCRAM-SHA-512", PASSWORD)
    # `tracker topics` over SASL (the admin client), as an operator would create them.
    for var, value in scram.as_environ().items():
        monkeypatch.setenv(var, value)
    assert await asyncio.to_thread(cli, ["topics"]) == 0
    consumer = await launch.consumer(scram)
    # The producer of `tracker send` and of the API, with the other mechanism.
    plain = dataclasses.replace(scram, kafka_sasl_mechanism="PLAIN")
    await send_one(plain, encode(payload_tracker("sasl-1", "ingress", "received", datetime.now(UTC))), key="sasl-1")
    await wait_stored(db, 1, process=consumer)
    assert await db.fetchval("SELECT trace_id FROM events") == "sasl-1"


async def test_wrong_credentials_end_the_consumer_promptly_with_a_clear_message(settings, sasl_broker, launch):
    right = on_sasl(settings, sasl_broker, "SCRAM-SHA-512", PASSWORD)
    from tracker.topics import ensure_topics

    await ensure_topics(sasl_broker.bootstrap_servers, [right.topic, right.dlq_topic], 1)
    wrong = dataclasses.replace(right, kafka_sasl_password="wrong-password")
    consumer = await launch.consumer(wrong, wait=False)
    started = time.monotonic()
    while consumer.alive:
        assert time.monotonic() - started < 60, "the consumer hangs on refused credentials:\n" + consumer.log()[-3000:]
        await asyncio.sleep(0.2)
    assert consumer.proc is not None and consumer.proc.returncode != 0
    log = consumer.log()
    assert "could not connect to Kafka" in log and "KAFKA_SASL_PASSWORD" in log and "SCRAM-SHA-512 as 'tracker'" in log
    assert "wrong-password" not in log and PASSWORD not in log  # the start-up line masks it too


def test_the_cli_says_the_same_about_wrong_credentials(settings, sasl_broker, monkeypatch, capsys):
    wrong = on_sasl(settings, sasl_broker, "PLAIN", "wrong-password")
    for var, value in wrong.as_environ().items():
        monkeypatch.setenv(var, value)
    code = cli(["send", "--trace-id", "sasl-2", "--service", "ingress", "--status", "received"])
    err = capsys.readouterr().err
    assert code != 0 and "could not connect to Kafka" in err and "PLAIN as 'tracker'" in err
    assert "wrong-password" not in err


def test_a_sasl_protocol_without_credentials_is_refused_at_start(settings, monkeypatch):
    from consumer.__main__ import main

    incomplete = dataclasses.replace(settings, kafka_security_protocol="SASL_SSL", kafka_sasl_username=None)
    for var, value in incomplete.as_environ().items():
        monkeypatch.setenv(var, value)
    assert main() == 2
