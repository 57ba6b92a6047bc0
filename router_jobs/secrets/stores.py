"""Secret stores: where API key values live, looked up by ``key_id``, cached with a TTL.

Chosen by ``SECRET_STORE_TYPE`` through :func:`build_secret_store`:

=========  ==========================================================================
``env``    ``API_KEY_<KEY_ID>`` (upper case, ``-`` and ``.`` as ``_``), or ``API_KEY_<key_id>``
``file``   a dotenv file at ``ROUTER_SECRETS_FILE`` with the same names (re-read on expiry)
``vault``  HashiCorp Vault KV v2 (``hvac``): ``VAULT_ADDR``, ``VAULT_TOKEN``,
           ``VAULT_SECRET_PATH`` = ``<mount>/<prefix>`` (``secret/llm``; or the prefix under
           ``VAULT_MOUNT_POINT`` when that is set); secret ``<prefix>/<key_id>``, field ``api_key``
``aws``    AWS Secrets Manager (``boto3``): ``AWS_REGION``, secret ``AWS_SECRET_PREFIX + key_id``
           holding ``{"api_key": "..."}`` or the plain value
``azure``  Azure Key Vault (``azure-keyvault-secrets`` + ``azure-identity``, optional extra):
           ``AZURE_KEYVAULT_URL``, secret name = key_id with ``_`` as ``-``
=========  ==========================================================================

Values are cached for ``ROUTER_SECRET_CACHE_TTL`` seconds, so a rotated secret takes effect
without a restart; :meth:`SecretStore.fingerprint` gives a short digest that changes when the
value does (the worker compares it to bring a key marked invalid back once its secret
changed). Errors name the key id, never a value. Every value read is added to the store's
:class:`~router_jobs.secrets.redaction.Redactor`, which log filters use to scrub records.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from router_jobs.errors import ConfigError, SecretStoreError
from router_jobs.secrets.redaction import Redactor
from router_jobs.settings import Settings

__all__ = [
    "SecretStore", "EnvSecretStore", "FileSecretStore", "VaultSecretStore", "AwsSecretStore",
    "AzureSecretStore", "build_secret_store", "secret_fingerprint", "env_names",
]


def secret_fingerprint(secret: str) -> str:
    """A short, non-reversible digest of a secret, to notice rotation without keeping it."""
    return hashlib.sha256(("router-jobs:" + secret).encode()).hexdigest()[:16]


def env_names(key_id: str) -> list[str]:
    """The variable names a key id's secret may have: normalized upper case, then raw."""
    upper = "API_KEY_" + key_id.upper().replace("-", "_").replace(".", "_")
    raw = "API_KEY_" + key_id
    return [upper] if raw == upper else [upper, raw]


class SecretStore:
    """Base: TTL cache, fingerprints and redaction around one ``_fetch`` per backend."""

    kind = "base"

    def __init__(self, ttl: float = 60.0, *, redactor: Redactor | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.redactor = redactor if redactor is not None else Redactor()
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str]] = {}

    def _fetch(self, key_id: str) -> str | None:
        """The backend's value for ``key_id``, None if it has none. Raise SecretStoreError."""
        raise NotImplementedError

    def get(self, key_id: str) -> str:
        """The secret of ``key_id`` (cached up to ``ttl`` s); SecretStoreError if missing."""
        now = self._clock()
        with self._lock:
            held = self._cache.get(key_id)
        if held is not None and now - held[0] < self.ttl:
            return held[1]
        value = self._fetch(key_id)
        if not value:
            raise SecretStoreError(f"no secret for key {key_id!r} in the {self.kind} secret store", key_id=key_id)
        self.redactor.add(value)
        with self._lock:
            self._cache[key_id] = (now, value)
        return value

    def fingerprint(self, key_id: str) -> str:
        """A short digest of the current secret of ``key_id`` (changes when it is rotated)."""
        return secret_fingerprint(self.get(key_id))

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget cached values (one key, or all) so the next ``get`` reads the backend."""
        with self._lock:
            if key_id is None:
                self._cache.clear()
            else:
                self._cache.pop(key_id, None)

    def _fail(self, key_id: str, exc: BaseException) -> SecretStoreError:
        return SecretStoreError(
            f"reading the secret of key {key_id!r} from the {self.kind} secret store failed ({type(exc).__name__})",
            key_id=key_id,
        )


class EnvSecretStore(SecretStore):
    """``API_KEY_<KEY_ID>`` variables (or ``API_KEY_<key_id>``) of ``environ``/the process."""

    kind = "env"

    def __init__(self, environ: Mapping[str, str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._environ = environ

    def _fetch(self, key_id: str) -> str | None:
        env = os.environ if self._environ is None else self._environ
        for name in env_names(key_id):
            if env.get(name):
                return env[name]
        return None


def parse_dotenv(text: str) -> dict[str, str]:
    """``NAME=value`` lines; ``export`` prefixes, ``#`` comments and quotes understood."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[name.strip()] = value
    return out


class FileSecretStore(SecretStore):
    """A dotenv file with ``API_KEY_<KEY_ID>`` lines, re-read when cached values expire."""

    kind = "file"

    def __init__(self, path: Path | str, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = Path(path)

    def _fetch(self, key_id: str) -> str | None:
        try:
            values = parse_dotenv(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise self._fail(key_id, exc) from None
        return EnvSecretStore(values)._fetch(key_id)


class VaultSecretStore(SecretStore):
    """HashiCorp Vault KV v2 via ``hvac``: ``<mount>/data/<prefix>/<key_id>``, field ``api_key``."""

    kind = "vault"
    field = "api_key"

    def __init__(self, addr: str, token: str | None, secret_path: str = "secret/llm",
                 mount_point: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import hvac
        except ImportError:
            raise ConfigError("SECRET_STORE_TYPE=vault needs hvac: pip install 'router-jobs[vault]'") from None
        path = secret_path.strip("/")
        if mount_point:
            self.mount, self.prefix = mount_point.strip("/"), path
        else:
            self.mount, _, self.prefix = path.partition("/")
        self._hvac = hvac
        self._client = hvac.Client(url=addr, token=token)

    def _fetch(self, key_id: str) -> str | None:
        path = f"{self.prefix}/{key_id}" if self.prefix else key_id
        try:
            resp = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount, raise_on_deleted_version=True
            )
        except self._hvac.exceptions.InvalidPath:
            return None
        except (self._hvac.exceptions.VaultError, OSError) as exc:  # requests' errors are OSErrors
            raise self._fail(key_id, exc) from None
        data = ((resp or {}).get("data") or {}).get("data") or {}
        value = data.get(self.field)
        return str(value) if value else None


class AwsSecretStore(SecretStore):
    """AWS Secrets Manager via ``boto3``: secret ``prefix + key_id``, JSON ``api_key`` or plain."""

    kind = "aws"

    def __init__(self, region: str, prefix: str = "llm/", client: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError("SECRET_STORE_TYPE=aws needs boto3: pip install 'router-jobs[aws]'") from None
            client = boto3.client("secretsmanager", region_name=region)
        self.prefix = prefix
        self._client = client

    def _fetch(self, key_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client.get_secret_value(SecretId=self.prefix + key_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise self._fail(key_id, exc) from None
        except BotoCoreError as exc:
            raise self._fail(key_id, exc) from None
        raw = resp.get("SecretString")
        if raw is None and resp.get("SecretBinary") is not None:
            raw = bytes(resp["SecretBinary"]).decode("utf-8")
        if not raw:
            return None
        if raw.lstrip().startswith("{"):
            try:
                doc = json.loads(raw)
            except ValueError:
                return raw
            value = doc.get("api_key") if isinstance(doc, dict) else None
            return str(value) if value else None
        return raw


class AzureSecretStore(SecretStore):
    """Azure Key Vault: secret named key_id with ``_`` as ``-`` (Key Vault allows no ``_``).

    Needs the optional extra ``router-jobs[azure]``; credentials come from
    ``DefaultAzureCredential`` (environment, managed identity, CLI login).
    """

    kind = "azure"

    def __init__(self, vault_url: str | None, **kw: Any) -> None:
        super().__init__(**kw)
        if not vault_url:
            raise ConfigError("SECRET_STORE_TYPE=azure needs AZURE_KEYVAULT_URL", field="azure_keyvault_url")
        try:
            from azure.identity import DefaultAzureCredential
            from azure.keyvault.secrets import SecretClient
        except ImportError:
            raise ConfigError("SECRET_STORE_TYPE=azure needs pip install 'router-jobs[azure]'") from None
        self._client = SecretClient(vault_url=vault_url, credential=DefaultAzureCredential())

    def _fetch(self, key_id: str) -> str | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self._client.get_secret(key_id.replace("_", "-")).value
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._fail(key_id, exc) from None


def build_secret_store(settings: Settings, *, environ: Mapping[str, str] | None = None,
                       redactor: Redactor | None = None) -> SecretStore:
    """The secret store ``settings.secret_store_type`` names, with its TTL cache."""
    kw: dict[str, Any] = {"ttl": settings.secret_cache_ttl, "redactor": redactor}
    kind = settings.secret_store_type.strip().lower()
    if kind == "env":
        return EnvSecretStore(environ, **kw)
    if kind in ("file", "dotenv"):
        if settings.secrets_file is None:
            raise ConfigError("SECRET_STORE_TYPE=file needs ROUTER_SECRETS_FILE", field="secrets_file")
        return FileSecretStore(settings.secrets_file, **kw)
    if kind == "vault":
        if not settings.vault_addr:
            raise ConfigError("SECRET_STORE_TYPE=vault needs VAULT_ADDR", field="vault_addr")
        return VaultSecretStore(settings.vault_addr, settings.vault_token, settings.vault_secret_path,
                                settings.vault_mount_point, **kw)
    if kind == "aws":
        return AwsSecretStore(settings.aws_region, settings.aws_secret_prefix, **kw)
    if kind == "azure":
        return AzureSecretStore(settings.azure_keyvault_url, **kw)
    raise ConfigError(f"SECRET_STORE_TYPE must be env, file, vault, aws or azure, not {kind!r}",
                      field="secret_store_type")
