"""A real Prometheus (Debian's package) scraping this test's consumer and API, with the
project's alert rules loaded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tracker.devservices.ports import free_port

RULES = Path(__file__).resolve().parents[2] / "prometheus/rules.yml"


@pytest.fixture
async def prometheus(tmp_path, settings):
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: bin/test installs Debian's prometheus package"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "tracker-consumer", "static_configs": [{"targets": [f"127.0.0.1:{settings.consumer_port}"]}]},
            {"job_name": "tracker-api", "static_configs": [{"targets": [f"127.0.0.1:{settings.api_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)
