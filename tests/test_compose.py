"""docker-compose.yml and the Dockerfile, checked without Docker: settings the
code really reads, ports that match them, files that exist, pinned images."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tracker.settings import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
TRACKER_SERVICES = {
    name: s for name, s in COMPOSE["services"].items() if str(s.get("image", "")).startswith("tracker:")
}


def test_every_tracker_setting_in_compose_is_read_by_the_code():
    known = {var for var, _ in ENVIRONMENT.values()}
    assert TRACKER_SERVICES, "no service runs the tracker image"
    for name, service in TRACKER_SERVICES.items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name} sets {unknown}, which no code reads"


def test_published_ports_match_the_port_settings():
    for name, service in TRACKER_SERVICES.items():
        env = service["environment"]
        for var in ("TRACKER_API_PORT", "TRACKER_CONSUMER_PORT"):
            if var in env:
                assert f"{env[var]}:{env[var]}" in service["ports"], (name, var)
                host_var = var.replace("_PORT", "_HOST")
                assert env.get(host_var) == "0.0.0.0", f"{name} must listen beyond loopback in a container"


def test_images_are_pinned_to_versions():
    for name, service in COMPOSE["services"].items():
        image = service.get("image", "")
        assert re.search(r":v?\d[\w.\-]*$", image), f"{name}: image {image!r} is not pinned to a version"
    from_line = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert from_line, "Dockerfile has no FROM line"
    base = from_line.group(1)
    assert re.search(r":\d+\.\d+\.\d+", base), base


def test_files_the_image_copies_exist_and_it_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)


def test_commands_name_modules_that_exist():
    for name, service in TRACKER_SERVICES.items():
        command = " ".join(service.get("command", []))
        for module in re.findall(r"python -m ([\w.]+)", command):
            path = ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), (name, module)


def test_mounted_files_exist():
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_scrapes_the_ports_the_processes_listen_on():
    config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    consumer_env = COMPOSE["services"]["consumer"]["environment"]
    api_env = COMPOSE["services"]["api"]["environment"]
    assert targets["tracker-consumer"] == f"consumer:{consumer_env['TRACKER_CONSUMER_PORT']}"
    assert targets["tracker-api"] == f"api:{api_env['TRACKER_API_PORT']}"
    assert "/etc/prometheus/rules.yml" in config["rule_files"]
    mounted = COMPOSE["services"]["prometheus"]["volumes"]
    assert any(v.endswith(":/etc/prometheus/rules.yml:ro") for v in mounted)


def test_grafana_provisions_the_dashboard_from_the_mounted_folder():
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/tracker.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert any(v.split(":")[1] == path for v in COMPOSE["services"]["grafana"]["volumes"])
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_api_runs_with_auth_on_and_its_first_admin_token_comes_from_the_environment():
    api = TRACKER_SERVICES["api"]["environment"]
    assert api["TRACKER_AUTH"] == "on"
    init = TRACKER_SERVICES["init"]
    # Required (compose refuses to start without it) and stored by the migrate step.
    assert init["environment"]["TRACKER_ADMIN_TOKEN"].startswith("${TRACKER_ADMIN_TOKEN:?")
    assert "tracker.cli migrate" in " ".join(init["command"])
    # Only the init service holds the secret.
    assert all("TRACKER_ADMIN_TOKEN" not in s["environment"] for n, s in TRACKER_SERVICES.items() if n != "init")
