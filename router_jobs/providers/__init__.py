"""Provider adapters, one module per provider, behind :mod:`router_jobs.providers.base`.

:func:`get_adapter` returns the shared adapter of a provider by name. SDKs are imported only
when their provider is first asked for, so a missing optional SDK fails for that provider
alone, with a :class:`~router_jobs.errors.ConfigError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import threading

from router_jobs.errors import ConfigError
from router_jobs.providers.base import (
    ChatRequest,
    ChatResponse,
    KeyCredentials,
    ProviderAdapter,
    RateLimitInfo,
)

__all__ = [
    "ChatRequest", "ChatResponse", "KeyCredentials", "ProviderAdapter", "RateLimitInfo",
    "get_adapter", "PROVIDERS",
]

#: provider name -> (module, class, constructor args, pip extra)
PROVIDERS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "openai": ("openai_provider", "OpenAIAdapter", ("openai",), "openai"),
    "openai-compatible": ("openai_provider", "OpenAIAdapter", ("openai-compatible",), "openai"),
    "anthropic": ("anthropic_provider", "AnthropicAdapter", (), "anthropic"),
    "gemini": ("gemini_provider", "GeminiAdapter", (), "gemini"),
    "fake": ("fake", "FakeAdapter", (), ""),
}

_lock = threading.Lock()
_adapters: dict[str, ProviderAdapter] = {}


def get_adapter(provider_name: str) -> ProviderAdapter:
    """The adapter for ``provider_name`` (one per process, thread-safe, clients cached per key)."""
    with _lock:
        adapter = _adapters.get(provider_name)
        if adapter is not None:
            return adapter
        spec = PROVIDERS.get(provider_name)
        if spec is None:
            raise ConfigError(f"unknown provider {provider_name!r}; known: {', '.join(PROVIDERS)}", field="provider")
        module_name, class_name, args, extra = spec
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ImportError as exc:
            hint = f"pip install 'router-jobs[{extra}]'" if extra else "check the installation"
            raise ConfigError(
                f"provider {provider_name!r} needs a package that is not installed ({exc.name}): {hint}",
                field="provider",
            ) from None
        adapter = getattr(module, class_name)(*args)
        _adapters[provider_name] = adapter
        return adapter
