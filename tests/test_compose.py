"""docker-compose.yml and the Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli.main import cli
from router_jobs.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("worker", "metrics", "fakeserver")
EXTRA_ENV = {"PROMETHEUS_MULTIPROC_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def parse_routerctl(argv: list[str]) -> click.Context:
    """Parse a ``routerctl …`` command line with the real CLI (raises on unknown options)."""
    assert argv[0] == "routerctl"
    cmd: click.Command = cli
    args = list(argv[1:])
    while isinstance(cmd, click.Group):
        name = args.pop(0)
        assert name in cmd.commands, f"routerctl has no command {name!r}"
        cmd = cmd.commands[name]
    return cmd.make_context(name, args)


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "metrics", "gateway", "prometheus", "grafana", "fakeserver"}
    assert services["fakeserver"]["profiles"] == ["demo"]
    for name in ("redis", "worker", "metrics", "gateway", "prometheus", "grafana"):
        assert "profiles" not in services[name]


def test_redis_keeps_every_job(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = " ".join(redis["command"])
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_workers_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    ctx = parse_routerctl(worker["command"])
    assert ctx.command.name == "worker" and ctx.params["processes"] >= 1
    # `--scale worker=4` needs no fixed name and no host port
    assert "container_name" not in worker and "ports" not in worker
    env = worker["environment"]
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/run/") and any(
        t.startswith(env["PROMETHEUS_MULTIPROC_DIR"]) for t in worker["tmpfs"])
    assert env["ROUTER_WORKER_METRICS_PORT"] == "9465" and "9465" in worker["expose"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_metrics_server_port_matches_prometheus(compose: dict[str, Any]) -> None:
    metrics = compose["services"]["metrics"]
    ctx = parse_routerctl(metrics["command"])
    assert ctx.info_name == "serve" and ctx.params["redis_gauges"] is True
    assert metrics["ports"] == [f"{ctx.params['port']}:{ctx.params['port']}"]
    prom = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    targets = [t for j in prom["scrape_configs"] for sc in j.get("static_configs", []) for t in sc["targets"]]
    assert f"metrics:{ctx.params['port']}" in targets


def test_fake_provider_for_the_demo(compose: dict[str, Any]) -> None:
    fake = compose["services"]["fakeserver"]
    cmd = fake["command"]
    assert cmd[:3] == ["python", "-m", "fakeproviders"]
    port = cmd[cmd.index("--port") + 1]
    assert port in fake["expose"]
    keys = (ROOT / "config/keys.demo.json").read_text()
    assert f"http://fakeserver:{port}/v1" in keys
    # the demo secrets the workers get are the ones the fake server accepts
    accepted = {kv.split("=", 1)[1] for i, kv in enumerate(cmd) if cmd[i - 1] == "--key"}
    given = {v for k, v in compose["x-app-env"].items() if k.startswith("API_KEY_")}
    assert accepted == given


def test_grafana_and_prometheus_are_provisioned(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert "3000:3000" in services["grafana"]["ports"] and "9090:9090" in services["prometheus"]["ports"]
    vols = services["grafana"]["volumes"]
    assert "./config/grafana/dashboard.json:/var/lib/grafana/dashboards/dashboard.json:ro" in vols
    assert "./config/grafana/provisioning:/etc/grafana/provisioning:ro" in vols
    for service in services.values():  # every file the stack mounts is in the repository
        for vol in service.get("volumes", []):
            if vol.startswith("./"):
                assert (ROOT / vol.split(":", 1)[0]).exists(), vol


def test_every_environment_name_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    allowed = set(ENV_NAMES) | EXTRA_ENV
    for name in APP_SERVICES:
        env = compose["services"][name].get("environment", {})
        for key in env:
            assert key in allowed or re.fullmatch(r"API_KEY_[A-Z0-9_]+", key), f"{name}: {key}"
        for value in env.values():  # interpolations name only variables the settings read
            for var in re.findall(r"\$\{([A-Z0-9_]+)", str(value)):
                assert var in allowed, var
    for key in compose["services"]["grafana"].get("environment", {}):
        assert key.startswith("GF_")


def test_dockerfile_builds_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert 'pip install ".[' in text and "USER app" in text
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_gateway_serves_without_provider_secrets(compose: dict[str, Any]) -> None:
    gw = compose["services"]["gateway"]
    ctx = parse_routerctl(gw["command"])
    assert ctx.info_name == "serve" and ctx.params["host"] == "0.0.0.0"
    assert gw["ports"] == [f"{ctx.params['port']}:{ctx.params['port']}"]
    assert gw["env_file"] == [] and not any(k.startswith("API_KEY_") for k in gw["environment"])
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    gateway_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "router-jobs-gateway")
    assert gateway_job["dns_sd_configs"][0]["port"] == ctx.params["port"]
