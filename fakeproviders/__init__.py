"""Local fake provider servers speaking OpenAI's, Anthropic's and Gemini's real wire formats.

Used by the tests (every adapter runs through its real SDK against them) and by the demo.
Stdlib only. See :class:`FakeProviderServer` for keys, limits, latency and failure
injection, and :mod:`fakeproviders.wire` for the scenario names.

Command line (for the demo and containers)::

    python -m fakeproviders --provider openai --port 8001 --key k1=sk-secret \\
        --limit k1=rpm:60,tpm:100000 --latency 0.05
"""

from fakeproviders.process import ProcessFakeServer
from fakeproviders.server import PROVIDERS, FakeProviderServer, KeyLimit, Record
from fakeproviders.wire import Scenario

__all__ = ["FakeProviderServer", "ProcessFakeServer", "KeyLimit", "PROVIDERS", "Record", "Scenario"]
