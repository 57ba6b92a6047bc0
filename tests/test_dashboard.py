"""The Grafana dashboard queries only metrics the code exports; Prometheus scrapes the exporters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from router_jobs.observability.exporter import exported_metric_names

ROOT = Path(__file__).resolve().parent.parent
#: series Prometheus itself makes for every target
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = _GROUPING.sub("", text)  # grouping label lists
    names = set()
    for m in _IDENT.finditer(text):
        if re.match(r"\s*\(", text[m.end():]):  # a function call
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent/suffix of a number such as 1e-9
        if m.group().lower() not in KEYWORDS:
            names.add(m.group())
    return names


def test_expression_parser() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le, queue) (rate(a_bucket{queue="x"}[5m])))') == {"a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9)") == {"a_total", "b_total"}
    assert metric_names("key_cooldown == 1") == {"key_cooldown"}


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "config/grafana/dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append(target["expr"])
    return out


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_metric_names() | BUILTIN
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    missing = {name: e for e in exprs for name in metric_names(e) if name not in exported}
    assert missing == {}


def test_dashboard_covers_queues_keys_latency_errors_spend() -> None:
    dash = json.loads((ROOT / "config/grafana/dashboard.json").read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Queues", "Keys", "Latency", "Errors", "Spend"]
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for name in ("key_rpm_used", "key_tpm_used", "key_cooldown", "request_router_attempts_total",
                 "request_router_rate_limited_total", "router_queue_depth", "router_queue_dead_letters",
                 "router_spend_usd_total", "router_provider_errors_total", "router_queue_wait_seconds_bucket"):
        assert name in used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_the_exporter_and_the_workers() -> None:
    conf = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert jobs["router-jobs-metrics"]["static_configs"][0]["targets"] == ["metrics:9464"]
    assert jobs["router-jobs-workers"]["dns_sd_configs"][0] == {
        "names": ["worker"], "type": "A", "port": 9465, "refresh_interval": "30s"}
