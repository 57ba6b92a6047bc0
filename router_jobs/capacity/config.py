"""Key configuration: the seed ``keys.json`` format plus additive fields.

The seed format stays valid::

    {"keys": [{"key_id": "gemini-flash-01", "model_name": "gemini-2.5-flash",
               "provider": "gemini", "rpm": 10, "tpm": 250000, "rpd": 1500,
               "active": true, "tags": {"tier": "free"}}]}

Additive fields (all optional): ``models`` (more model names served by the key),
``base_url`` (OpenAI-compatible endpoints), ``tpd``, ``itpm``/``otpm`` (input/output tokens
per minute), ``max_concurrency``, ``windows`` (extra limits such as 100 requests per 10 s),
``quota_group`` (several keys sharing one set of limits, defined under top-level
``quota_groups``), ``cost`` (USD per million input/output tokens), ``weight``, ``timeout``.

A file that does not validate raises :class:`~router_jobs.errors.ConfigError` naming the key
and the field. No secret lives here: secrets come from the secret store by ``key_id``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router_jobs.errors import ConfigError

ProviderName = Literal["gemini", "openai", "anthropic", "openai-compatible", "fake"]
LimitUnit = Literal["requests", "tokens", "input_tokens", "output_tokens"]


class Window(BaseModel):
    """An extra sliding-window limit: at most ``limit`` units per ``seconds``."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(gt=0)
    seconds: float = Field(gt=0)
    unit: LimitUnit = "requests"


class Cost(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)

    def of(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


EnforcementMode = Literal["rolling", "bucket", "quantized"]


class Enforcement(BaseModel):
    """How the provider enforces a scope's per-minute limits, so admission can pace to it.

    * ``rolling``: at most the limit in any 60 s window.
    * ``bucket``: a token bucket of ``capacity`` (default: the limit) refilled continuously at
      limit/60 per second. Admission paces the request count as that bucket (GCRA: its
      capacity less the margin at once, then one request per refill interval); token counts
      as a rolling window of capacity / refill seconds holding ``capacity``, which such a
      bucket always accepts.
    * ``quantized``: the minute's limit is also enforced per second, as ceil(limit / 60)
      (+ ``burst``) per second; admission adds that 1 s window.

    Daily (86,400 s) quotas are never paced; other windows (e.g. 100 per 10 s) like minutes.
    """

    model_config = ConfigDict(extra="forbid")

    mode: EnforcementMode = "rolling"
    burst: int = Field(default=0, ge=0)
    capacity: int | None = Field(default=None, gt=0)


#: Enforcement assumed when a key names none; see docs/architecture.md for each source.
PROVIDER_ENFORCEMENT: dict[str, EnforcementMode] = {
    "openai": "quantized", "anthropic": "bucket", "gemini": "rolling", "openai-compatible": "rolling",
    "fake": "rolling",
}


class Limits(BaseModel):
    """Limits of one scope (a key or a quota group). ``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    rpd: int | None = Field(default=None, gt=0)
    tpd: int | None = Field(default=None, gt=0)
    itpm: int | None = Field(default=None, gt=0)
    otpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    windows: list[Window] = Field(default_factory=list)
    enforcement: Enforcement | None = None

    def enforcement_model(self, provider: str | None = None) -> Enforcement:
        """The scope's enforcement model: given, else the provider's default, else rolling."""
        return self.enforcement or Enforcement(mode=PROVIDER_ENFORCEMENT.get(provider or "", "rolling"))

    def bucket_refill_s(self, provider: str | None = None) -> float | None:
        """Under a bucket model, the longest time one request takes to refill (s), else None."""
        if self.enforcement_model(provider).mode != "bucket":
            return None
        spans = [w.seconds / w.limit for w in self.all_windows() if w.unit == "requests" and w.seconds < 86400.0]
        return max(spans) if spans else None

    def enforced_windows(self, provider: str | None = None) -> list[Window]:
        """:meth:`all_windows` as admission paces them under the scope's enforcement model.
        A bucket's window is capacity / refill seconds holding its capacity (admission paces
        its request count as the bucket itself, see ``compile_limits``)."""
        enf = self.enforcement_model(provider)
        out: list[Window] = []
        for w in self.all_windows():
            if w.seconds >= 86400.0 or enf.mode == "rolling":  # daily quotas are not paced
                out.append(w)
            elif enf.mode == "bucket":
                cap = min(enf.capacity or w.limit, w.limit) if w.unit == "requests" else w.limit
                out.append(Window(limit=cap, seconds=w.seconds * cap / w.limit, unit=w.unit))
            else:
                out.append(w)
                per_second = math.ceil(w.limit / w.seconds) + enf.burst
                if w.seconds > 1.0 and per_second < w.limit:
                    out.append(Window(limit=per_second, seconds=1.0, unit=w.unit))
        return out

    def all_windows(self) -> list[Window]:
        """Every limit of the scope as a sliding window (daily limits as 86,400 s windows)."""
        out: list[Window] = []
        for value, seconds, unit in (
            (self.rpm, 60.0, "requests"),
            (self.tpm, 60.0, "tokens"),
            (self.itpm, 60.0, "input_tokens"),
            (self.otpm, 60.0, "output_tokens"),
            (self.rpd, 86400.0, "requests"),
            (self.tpd, 86400.0, "tokens"),
        ):
            if value is not None:
                out.append(Window(limit=value, seconds=seconds, unit=unit))  # type: ignore[arg-type]
        out.extend(self.windows)
        return out


class QuotaGroup(Limits):
    """Limits shared by every key that names this group (one provider project)."""

    name: str


class KeyConfig(Limits):
    """One API key's metadata. The secret itself is looked up by ``key_id``."""

    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(min_length=1, max_length=200)
    model_name: str | None = None
    models: list[str] = Field(default_factory=list)
    provider: ProviderName
    active: bool = True
    tags: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = None
    quota_group: str | None = None
    cost: Cost = Field(default_factory=Cost)
    weight: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=120.0, gt=0)

    @field_validator("key_id")
    @classmethod
    def _key_id_chars(cls, v: str) -> str:
        if any(c.isspace() for c in v) or any(c in v for c in "{}"):
            raise ValueError("must not contain whitespace or braces")
        if any(not c.isprintable() for c in v):  # NUL, control characters, lone surrogates
            raise ValueError("must hold printable characters only")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url_is_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://api.example.com/v1")
        return v

    @model_validator(mode="after")
    def _serves_something(self) -> KeyConfig:
        if not self.model_name and not self.models:
            raise ValueError("give model_name or models")
        return self

    def served_models(self) -> list[str]:
        """Every model name this key serves."""
        out = [self.model_name] if self.model_name else []
        out.extend(m for m in self.models if m not in out)
        return out


class KeysFile(BaseModel):
    """The whole keys file: keys plus optional shared quota groups."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyConfig]
    quota_groups: list[QuotaGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> KeysFile:
        seen: set[str] = set()
        for k in self.keys:
            if k.key_id in seen:
                raise ValueError(f"duplicate key_id {k.key_id!r}")
            seen.add(k.key_id)
        groups = {g.name for g in self.quota_groups}
        for k in self.keys:
            if k.quota_group is not None and k.quota_group not in groups:
                raise ValueError(f"key {k.key_id!r}: quota_group {k.quota_group!r} is not defined")
        return self

    def group(self, name: str) -> QuotaGroup:
        for g in self.quota_groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def active_keys(self) -> list[KeyConfig]:
        return [k for k in self.keys if k.active]

    def models(self) -> set[str]:
        """Every model some active key serves."""
        return {m for k in self.active_keys() for m in k.served_models()}


def _strip_comments(data: Any) -> Any:
    """Drop fields whose names start with ``_`` (comments: JSON has no other kind)."""
    if isinstance(data, dict):
        return {k: _strip_comments(v) for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(data, list):
        return [_strip_comments(v) for v in data]
    return data


def parse_keys(data: Any, *, source: str = "keys file") -> KeysFile:
    """Validate a decoded keys document; raise :class:`ConfigError` naming key and field.

    Fields whose names start with ``_`` are comments and ignored.
    """
    data = _strip_comments(data)
    try:
        return KeysFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err.get("loc", ()))
        key_id: str | None = None
        if len(loc) >= 2 and loc[0] == "keys" and isinstance(loc[1], int):
            try:
                key_id = str(data["keys"][loc[1]].get("key_id"))
            except (KeyError, IndexError, TypeError, AttributeError):
                key_id = None
        field = ".".join(str(p) for p in loc[2:]) if key_id is not None else ".".join(str(p) for p in loc)
        where = f"key {key_id!r} " if key_id else ""
        raise ConfigError(
            f"{source}: {where}field {field or '(root)'}: {err.get('msg')}", key_id=key_id, field=field or None
        ) from None


def load_keys(path: str | Path) -> KeysFile:
    """Read and validate a keys file. Raises :class:`ConfigError` on any problem."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {p}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"keys file {p} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
    return parse_keys(data, source=f"keys file {p}")
