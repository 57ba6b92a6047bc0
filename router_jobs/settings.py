"""Settings: one explicit object, read from the environment once and passed around.

Every environment name of the seed system stays valid (``REDIS_URL``, ``SECRET_STORE_TYPE``,
``VAULT_*``, ``AWS_*``, ``USER_RPM_DEFAULT`` …); names of our own start with ``ROUTER_``.
Nothing in the library reads the environment except :meth:`Settings.from_env`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from router_jobs.errors import ConfigError

#: environment name -> settings field. The single table of what the settings read.
ENV_NAMES: dict[str, str] = {
    "REDIS_URL": "redis_url",
    "ROUTER_KEYS_FILE": "keys_file",
    "ROUTER_STATE_DIR": "state_dir",
    "ROUTER_NAMESPACE": "namespace",
    "ROUTER_JOB_TTL_SECONDS": "job_ttl_seconds",
    "ROUTER_STREAM_TTL_SECONDS": "stream_ttl_seconds",
    "ROUTER_STREAM_MAXLEN": "stream_maxlen",
    "ROUTER_VISIBILITY_TIMEOUT_MS": "visibility_timeout_ms",
    "ROUTER_MAX_DELIVERIES": "max_deliveries",
    "ROUTER_MAX_PAYLOAD_BYTES": "max_payload_bytes",
    "ROUTER_MAX_ATTEMPTS": "max_attempts",
    "ROUTER_DEAD_LETTER_MAXLEN": "dead_letter_maxlen",
    "ROUTER_LOG_JSON": "log_json",
    "ROUTER_HISTORY_TOKEN_BUDGET": "history_token_budget",
    "ROUTER_SECRET_CACHE_TTL": "secret_cache_ttl",
    "ROUTER_SECRETS_FILE": "secrets_file",
    "ROUTER_METRICS_PORT": "metrics_port",
    "ROUTER_POOL_MARGIN_MS": "pool_margin_ms",
    "ROUTER_POOL_LATE_MS": "pool_late_ms",
    "ROUTER_POOL_LEAD_MS": "pool_lead_ms",
    "ROUTER_INTERACTIVE_SHARE": "interactive_share",
    "ROUTER_INTERACTIVE_SHARE_MIN": "interactive_share_min",
    "ROUTER_INTERACTIVE_HOLD_S": "interactive_hold_s",
    "ROUTER_INTERACTIVE_RESERVE": "interactive_reserve",
    "ROUTER_FAIRNESS_WEIGHTS": "fairness_weights",
    "ROUTER_WORKER_METRICS_PORT": "worker_metrics_port",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_multiproc_dir",
    "SECRET_STORE_TYPE": "secret_store_type",
    "VAULT_ADDR": "vault_addr",
    "VAULT_TOKEN": "vault_token",
    "VAULT_SECRET_PATH": "vault_secret_path",
    "VAULT_MOUNT_POINT": "vault_mount_point",
    "AWS_REGION": "aws_region",
    "AWS_SECRET_PREFIX": "aws_secret_prefix",
    "AZURE_KEYVAULT_URL": "azure_keyvault_url",
    "USER_RPM_DEFAULT": "user_rpm_default",
    "USER_BURST_DEFAULT": "user_burst_default",
    "GLOBAL_RPM_MAX": "global_rpm_max",
    "GLOBAL_BURST_MAX": "global_burst_max",
    "CONVERSATION_TTL_SECONDS": "conversation_ttl_seconds",
}


def default_state_dir() -> Path:
    """Where the embedded Redis keeps its data when ``ROUTER_STATE_DIR`` is not set."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "router-jobs"


class Settings(BaseModel):
    """Everything router-jobs can be configured with. Build it explicitly or ``from_env()``."""

    redis_url: str | None = None
    keys_file: Path = Path("keys.json")
    state_dir: Path = Field(default_factory=default_state_dir)
    namespace: str = "rj"
    job_ttl_seconds: int = Field(default=86400, gt=0)
    stream_ttl_seconds: int = Field(default=3600, gt=0)
    stream_maxlen: int = Field(default=20_000, gt=0)
    visibility_timeout_ms: int = Field(default=30000, ge=200)
    max_deliveries: int = Field(default=5, ge=1)
    max_payload_bytes: int = Field(default=1_000_000, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    dead_letter_maxlen: int = Field(default=100_000, gt=0)
    log_json: bool = False
    history_token_budget: int | None = None
    secret_store_type: str = "env"
    secret_cache_ttl: float = Field(default=60.0, ge=0)
    secrets_file: Path | None = None
    metrics_port: int = 9464
    #: safety margin on window ends (at most 1/40 of a window): the provider's clock may run
    #: behind our stamps by this much (its own queueing before its limiter sees a request)
    pool_margin_ms: int = Field(default=250, ge=0)
    pool_late_ms: int = Field(default=500, ge=0)
    #: how far ahead of a key's room the scheduler may admit a job (the worker starts the
    #: call at the moment the room exists, so delivery latency does not delay the window)
    pool_lead_ms: int = Field(default=250, ge=0, le=5000)
    #: most of each key held for interactive work while interactive jobs keep arriving
    interactive_share: float = Field(default=0.2, ge=0.0, le=0.9)
    #: least of each key held then (the share adapts to recent interactive demand in between)
    interactive_share_min: float = Field(default=0.02, ge=0.0, le=0.9)
    #: seconds after the last interactive arrival that a share stays held
    interactive_hold_s: float = Field(default=120.0, ge=0.0)
    #: when the least share stays held between interactive bursts: "auto" (within 30 hold times
    #: of an interactive arrival), "always" (from the start: a pool that serves chat), "off"
    interactive_reserve: Literal["auto", "always", "off"] = "auto"
    #: fairness key (user_id, tenant, batch id) -> weight of its share of batch admissions (default 1)
    fairness_weights: dict[str, float] = Field(default_factory=dict)
    worker_metrics_port: int | None = None
    prometheus_multiproc_dir: Path | None = None
    vault_addr: str | None = None
    vault_token: str | None = Field(default=None, repr=False)
    vault_secret_path: str = "secret/llm"
    vault_mount_point: str | None = None
    aws_region: str = "us-east-1"
    aws_secret_prefix: str = "llm/"
    azure_keyvault_url: str | None = None
    user_rpm_default: float = Field(default=10, gt=0)
    user_burst_default: float = Field(default=20, gt=0)
    global_rpm_max: float = Field(default=1000, gt=0)
    global_burst_max: float = Field(default=2000, gt=0)
    conversation_ttl_seconds: int = Field(default=86400, gt=0)

    @field_validator("fairness_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> dict[str, float]:
        return parse_fairness_weights(value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from the environment (or ``environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field_name in ENV_NAMES.items():
            raw = env.get(name)
            if raw is not None and raw != "":
                values[field_name] = raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(str(p) for p in err.get("loc", ()))
            env_name = next((k for k, v in ENV_NAMES.items() if v == field_name), field_name)
            raise ConfigError(f"setting {env_name}: {err.get('msg')}", field=field_name) from None


#: the largest weight that still changes a share (fair tags advance by 1,000,000 / weight)
MAX_FAIRNESS_WEIGHT = 1_000_000.0


def parse_fairness_weights(value: Any) -> dict[str, float]:
    """Fairness weights from ``tenant-a=4,alice=2``, a JSON object (``{"tenant-a": 4}``) or a
    mapping. Each weight is a number > 0 and at most 1,000,000; raises ValueError naming the
    entry that is not."""
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON object: {exc.msg}") from None
        else:
            pairs: dict[str, Any] = {}
            for item in filter(None, (p.strip() for p in text.split(","))):
                name, eq, text_weight = (x.strip() for x in item.partition("="))
                if not eq or not name:
                    raise ValueError(f"{item!r} is not fairness-key=weight")
                if name in pairs:
                    raise ValueError(f"fairness key {name!r} is given twice")
                pairs[name] = text_weight
            value = pairs
    if not isinstance(value, Mapping):
        raise ValueError("give fairness-key=weight pairs separated by commas, or a JSON object")
    out: dict[str, float] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"fairness key {key!r} must be a non-empty string")
        w = _weight(raw)
        if w is None or not 0 < w <= MAX_FAIRNESS_WEIGHT:
            raise ValueError(f"weight of {key!r} must be a number above 0 and at most 1000000, not {raw!r}")
        out[key] = w
    return out


def _weight(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        w = float(raw)
    elif isinstance(raw, str):
        try:
            w = float(raw)
        except ValueError:
            return None
    else:
        return None
    return w if math.isfinite(w) else None
