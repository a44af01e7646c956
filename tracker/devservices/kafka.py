"""A local Apache Kafka broker (KRaft, single node) from the jars on Maven Central.

`pom.xml` next to this file names the broker (`org.apache.kafka:kafka_2.13`)
and a log4j2 backend; Maven resolves them into ~/.m2 and writes the classpath
to a cache file outside the work tree, so the second start needs no network.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tracker.devservices.logs import tail
from tracker.devservices.ports import free_port

log = logging.getLogger("tracker.devservices.kafka")

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J2 = HERE / "log4j2.properties"


def kafka_classpath(cache_home: str | None = None) -> str:
    """The broker's classpath, resolved by Maven once and cached by pom.xml's content under
    ``cache_home`` (XDG_CACHE_HOME, default ~/.cache)."""
    import hashlib

    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cp_file = Path(cache_home or Path.home() / ".cache") / "tracker" / f"kafka-classpath-{digest}.txt"
    if cp_file.exists():
        classpath = cp_file.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka broker's jars from Maven Central")
    cp_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("resolving the Kafka broker's jars with Maven (first start only)")
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return cp_file.read_text().strip()


def _cluster_id() -> str:
    # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding; like
    # Kafka's own Uuid.randomUuid, never one starting with "-" (it would read as an option).
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafka:
    """One combined broker + controller on 127.0.0.1, data in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        heap: str = "768m",
        java_home: str | None = None,
        cache_home: str | None = None,
        sasl_users: dict[str, str] | None = None,
    ) -> None:
        """``sasl_users`` (name: password): also listen with SASL_PLAINTEXT on ``sasl_port``,
        where these users log in by PLAIN or SCRAM-SHA-512 (the tests of KAFKA_SASL_*)."""
        self.state_dir = Path(state_dir)
        self.sasl_users = sasl_users or {}
        self.sasl_port: int | None = None
        self.java_home, self.cache_home = java_home, cache_home
        self.log_dirs = self.state_dir / "data"
        self.config_file = self.state_dir / "server.properties"
        self.log_file = self.state_dir / "server.log"
        self.heap = heap
        self.port: int | None = None
        self.controller_port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._classpath: str | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _write_config(self) -> None:
        # Static controller.quorum.voters (not --standalone) so that the ports
        # may change from one start to the next on the same data.
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        if self.sasl_users:
            # The PLAINTEXT listener stays for the broker itself and our readiness check.
            plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users.items())
            props.update(
                {
                    "listeners": props["listeners"] + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                    "advertised.listeners": props["advertised.listeners"]
                    + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                    "listener.security.protocol.map": props["listener.security.protocol.map"]
                    + ",SASL_PLAINTEXT:SASL_PLAINTEXT",
                    "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                        f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
                    ),
                    "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                }
            )
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self) -> str:
        if self.java_home and Path(self.java_home, "bin", "java").exists():
            return str(Path(self.java_home, "bin", "java"))
        java = shutil.which("java")
        if not java:
            raise RuntimeError("a Java runtime (java) is needed to run the local Kafka broker")
        return java

    def start(self, timeout: float = 120.0, on_launch=None) -> LocalKafka:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._classpath = kafka_classpath(self.cache_home)
        self.port, self.controller_port = free_port(), free_port()
        if self.sasl_users:
            self.sasl_port = free_port()
        self._write_config()
        java = self._java()
        if not (self.log_dirs / "meta.properties").exists():
            result = subprocess.run(
                [
                    java,
                    "-cp",
                    self._classpath,
                    f"-Dlog4j2.configurationFile={LOG4J2}",
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(self.config_file),
                    # SCRAM credentials live in the cluster metadata, written at format time.
                    *(
                        f"--add-scram=SCRAM-SHA-512=[name={name},password={password}]"
                        for name, password in self.sasl_users.items()
                    ),
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise RuntimeError(f"kafka-storage format failed:\n{result.stdout}{result.stderr}")
        proc = self._launch()
        if on_launch is not None:
            on_launch(proc.pid)
        self._wait_ready(timeout)
        log.info("Kafka ready on %s", self.bootstrap_servers)
        return self

    def _launch(self) -> subprocess.Popen:
        if self._classpath is None:
            raise RuntimeError("start() resolves the classpath before launching")
        log_handle = open(self.log_file, "ab")
        self._proc = subprocess.Popen(
            [
                self._java(),
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                self._classpath,
                "kafka.Kafka",
                str(self.config_file),
            ],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C in a terminal reaches our launcher, which stops us cleanly.
            start_new_session=True,
        )
        log_handle.close()
        return self._proc

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # "connection refused" is expected until the broker listens; don't log it as an error.
        quiet = logging.getLogger("aiokafka")
        saved_level, quiet.level = quiet.level, logging.CRITICAL
        try:
            self._poll_ready(deadline)
        finally:
            quiet.setLevel(saved_level)

    def _poll_ready(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self._proc.returncode}:\n{tail(self.log_file, 40)}")
            try:
                asyncio.run(admin_ready(self.bootstrap_servers))
                return
            except Exception as exc:  # not up yet: connection refused, no controller, ...
                last_error = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Kafka not ready in time ({last_error!r}):\n{tail(self.log_file, 40)}")

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # controlled shutdown
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 120.0) -> None:
        """Stop, then start again on the same ports and data."""
        self.stop()
        self._launch()
        self._wait_ready(timeout)


async def admin_ready(bootstrap_servers: str) -> None:
    """A real admin round trip: the broker answers and has a controller."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.list_topics()
        cluster = await admin.describe_cluster()
        if cluster.get("controller_id", -1) < 0:
            raise RuntimeError("no active controller yet")
    finally:
        await admin.close()
