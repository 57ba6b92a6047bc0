"""Secret stores (env, file, Vault through hvac, AWS through moto), TTL cache, redaction."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from router_jobs.errors import ConfigError, SecretStoreError
from router_jobs.providers import errors_map
from router_jobs.secrets.redaction import Redactor, install_log_redaction
from router_jobs.secrets.stores import (
    AwsSecretStore,
    EnvSecretStore,
    build_secret_store,
    env_names,
)
from router_jobs.settings import Settings

CANARY = "sk-canary-secret-0123456789"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_env_names_both_forms() -> None:
    assert env_names("gemini-flash-01") == ["API_KEY_GEMINI_FLASH_01", "API_KEY_gemini-flash-01"]
    assert env_names("OPENAI") == ["API_KEY_OPENAI"]


def test_env_store_both_forms_and_missing() -> None:
    store = build_secret_store(Settings(secret_store_type="env"),
                               environ={"API_KEY_GEMINI_FLASH_01": "v-upper-1", "API_KEY_raw-id.x": "v-raw-22"})
    assert store.get("gemini-flash-01") == "v-upper-1"
    assert store.get("raw-id.x") == "v-raw-22"
    with pytest.raises(SecretStoreError) as info:
        store.get("nope-key")
    assert info.value.key_id == "nope-key" and "nope-key" in str(info.value)


def test_ttl_cache_and_rotation_fingerprint() -> None:
    env = {"API_KEY_K1": "first-secret-value"}
    clock = Clock()
    store = EnvSecretStore(env, ttl=60, clock=clock)
    fp1 = store.fingerprint("k1")
    env["API_KEY_K1"] = "rotated-secret-value"
    assert store.get("k1") == "first-secret-value"  # cached
    clock.t += 61
    assert store.get("k1") == "rotated-secret-value"  # rotation seen without a restart
    fp2 = store.fingerprint("k1")
    assert fp1 != fp2 and len(fp2) == 16 and "rotated" not in fp2
    env["API_KEY_K1"] = "third-secret-value"
    store.invalidate("k1")
    assert store.get("k1") == "third-secret-value"
    assert set(store.redactor.values) >= {"first-secret-value", "rotated-secret-value", "third-secret-value"}


def test_file_store(tmp_path: Path) -> None:
    f = tmp_path / "secrets.env"
    f.write_text('# keys\nexport API_KEY_OPENAI_MAIN="quoted-value-1"\nAPI_KEY_claude.b=plain-value-2 # note\n')
    store = build_secret_store(Settings(secret_store_type="file", secrets_file=f, secret_cache_ttl=0))
    assert store.get("openai-main") == "quoted-value-1"
    assert store.get("claude.b") == "plain-value-2"
    f.write_text("API_KEY_OPENAI_MAIN=rotated-value-3\n")
    assert store.get("openai-main") == "rotated-value-3"
    with pytest.raises(ConfigError):
        build_secret_store(Settings(secret_store_type="file"))
    with pytest.raises(ConfigError):
        build_secret_store(Settings(secret_store_type="nonsense"))


# ---------------------------------------------------------------- Vault (real hvac, local KV v2 server)


class _Vault(BaseHTTPRequestHandler):
    data: dict[str, dict[str, Any]] = {}
    token = "vault-root-token"

    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-Vault-Token") != self.token:
            return self._send(403, {"errors": ["permission denied"]})
        path = self.path.split("?")[0]
        doc = self.data.get(path)
        if doc is None:
            return self._send(404, {"errors": []})
        self._send(200, {"request_id": "r1", "lease_id": "", "renewable": False, "lease_duration": 0,
                         "data": {"data": doc, "metadata": {"version": 1, "deletion_time": "", "destroyed": False}}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def vault() -> Iterator[str]:
    _Vault.data = {"/v1/secret/data/llm/openai-main": {"api_key": "vault-value-1"}}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Vault)
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_vault_kv2_read_missing_and_denied(vault: str) -> None:
    settings = Settings(secret_store_type="vault", vault_addr=vault, vault_token="vault-root-token",
                        vault_secret_path="secret/llm", secret_cache_ttl=0)
    store = build_secret_store(settings)
    assert store.get("openai-main") == "vault-value-1"
    _Vault.data["/v1/secret/data/llm/openai-main"] = {"api_key": "vault-value-2"}
    assert store.get("openai-main") == "vault-value-2"
    with pytest.raises(SecretStoreError):
        store.get("missing")
    bad = build_secret_store(settings.model_copy(update={"vault_token": "wrong-token"}))
    with pytest.raises(SecretStoreError) as info:
        bad.get("openai-main")
    assert "wrong-token" not in str(info.value) and info.value.key_id == "openai-main"
    mounted = build_secret_store(settings.model_copy(update={"vault_mount_point": "secret", "vault_secret_path": "llm"}))
    assert mounted.get("openai-main") == "vault-value-2"


# ---------------------------------------------------------------- AWS (moto)


def test_aws_json_plain_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        sm = boto3.client("secretsmanager", region_name="eu-west-1")
        sm.create_secret(Name="llm/openai-main", SecretString=json.dumps({"api_key": "aws-json-value"}))
        sm.create_secret(Name="llm/claude-1", SecretString="aws-plain-value")
        store = build_secret_store(Settings(secret_store_type="aws", aws_region="eu-west-1", secret_cache_ttl=0))
        assert isinstance(store, AwsSecretStore)
        assert store.get("openai-main") == "aws-json-value"
        assert store.get("claude-1") == "aws-plain-value"
        sm.put_secret_value(SecretId="llm/claude-1", SecretString="aws-rotated-value")
        assert store.get("claude-1") == "aws-rotated-value"
        with pytest.raises(SecretStoreError):
            store.get("missing")


def test_azure_without_url_is_config_error() -> None:
    with pytest.raises(ConfigError):
        build_secret_store(Settings(secret_store_type="azure"))


# ---------------------------------------------------------------- redaction


def test_redactor_and_log_filter(caplog: pytest.LogCaptureFixture) -> None:
    red = Redactor([CANARY, "abc"])  # too short values are ignored
    assert red.redact(f"x {CANARY} y abc") == "x [REDACTED] y abc"
    assert "AIza-other" not in red.redact("GET https://h/v1?key=AIza-other&alt=json")
    logger = logging.getLogger("rj.test.redaction")
    filt = install_log_redaction(red)
    caplog.handler.addFilter(filt)
    try:
        logger.warning("calling with %s", CANARY)
        logger.warning("direct " + CANARY)
        try:
            raise RuntimeError(f"boom {CANARY}")
        except RuntimeError:
            logger.exception("failed")
        text = caplog.text
        assert "calling with [REDACTED]" in text and "direct [REDACTED]" in text
        assert CANARY not in text
    finally:
        logging.getLogger().removeFilter(filt)
        for h in logging.getLogger().handlers:
            h.removeFilter(filt)


KEY = "sk-proj-Q7v9xK2mN4pL8rT1wY6zB3cD5fG0hJeU"
ECHOES = [
    # OpenAI's own masked echo: visible head and tail around stars
    "Incorrect API key provided: sk-proj-Q7v9****************************hJeU. You can find your API key at ...",
    "invalid key sk-pr...0hJeU",  # a gateway's short form
    "the key …fG0hJeU was revoked",  # only a tail
    '{"error": {"message": "key \'sk-proj-Q7v9xK2mN4pL\' is not allowed"}}',  # its first 20 characters
    "upstream said: Q7v9xK2mN4pL8rT1wY6z\nB3cD5fG0hJeU",  # cut by a line break: both halves are pieces
    "token mN4pL8rT1w in the body",  # a piece from the middle
]


@pytest.mark.parametrize("body", ECHOES)
def test_pieces_of_a_secret_echoed_by_a_provider_are_redacted(body: str, caplog: pytest.LogCaptureFixture) -> None:
    red = Redactor([KEY])
    pieces = {KEY[i:i + 8] for i in range(len(KEY) - 7)} | {"hJeU", "0hJeU", "fG0hJeU"}
    clean = red.redact(body)
    assert "[REDACTED]" in clean and not any(p in clean for p in pieces), clean
    assert not any(p in errors_map.redact(body, [KEY]) for p in pieces)  # error messages in results too
    logger = logging.getLogger("rj.test.fragments")
    filt = install_log_redaction(red)
    caplog.handler.addFilter(filt)
    try:
        logger.error("provider error: %s", body)
        assert not any(p in caplog.text for p in pieces)
    finally:
        logging.getLogger().removeFilter(filt)
        for h in logging.getLogger().handlers:
            h.removeFilter(filt)


def test_ordinary_text_is_left_alone() -> None:
    red = Redactor([KEY])
    for text in ("Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 500, Used 500.",
                 "loading... done", "error *** see above", "sk-ab***"):
        assert red.redact(text) == text


def test_every_piece_of_eight_or_more_is_found_wherever_it_sits() -> None:
    red = Redactor([KEY])
    for start in range(len(KEY) - 8 + 1):
        for length in (8, 9, 11, 13):
            piece = KEY[start:start + length]
            if len(piece) < 8:
                continue
            for pad in range(5):  # the piece at every alignment against the scan's stride
                text = "x" * pad + " said " + piece + " then"
                clean = red.redact(text)
                assert piece not in clean and "[REDACTED]" in clean, (start, length, pad, clean)
