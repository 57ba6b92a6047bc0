"""Finding *pieces* of known secrets in text: what providers echo back in error bodies.

Providers rarely echo a whole key, but often a piece of one: OpenAI's "Incorrect API key
provided: sk-proj-abc1********************wxyz", a gateway quoting the first 20 characters,
a proxy logging the key cut at a line break. Replacing exact values misses all of those.
:class:`FragmentIndex` knows every run of ``FRAGMENT_LENGTH`` characters of each secret, and
redacts any stretch of text made of such runs (any 8 or more characters in a row that also
appear in a row in a secret), plus masked echoes: a token whose visible head starts a secret
or whose visible tail ends one, around a mask of ``***``, ``...`` or ``…``.

Over-redacting is the safe side: a shared prefix such as ``sk-proj-`` is 8 characters and is
redacted wherever it appears, which costs a log line a little clarity and no secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: shortest stretch of a secret treated as a leak of it
FRAGMENT_LENGTH = 8
#: shortest visible head or tail of a masked echo that is compared with the secrets
MASKED_VISIBLE = 3

_MASK = re.compile(r"\*{3,}|\.{3,}|…")
_HEAD = re.compile(r"[A-Za-z0-9_\-]+\Z")
_TAIL = re.compile(r"[A-Za-z0-9_\-]+")
#: probe stride of the scan: every run of FRAGMENT_LENGTH holds an aligned run of _QUAD
_QUAD = 4
#: how far before a mask its visible head is looked for (longer than any API key)
_LONGEST_HEAD = 512


class FragmentIndex:
    """Every ``FRAGMENT_LENGTH``-character run of some secrets, to redact pieces of them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s)
        n = FRAGMENT_LENGTH
        self._grams = {s[i:i + n] for s in self.secrets for i in range(len(s) - n + 1)}
        self._quads = {g[i:i + _QUAD] for g in self._grams for i in range(n - _QUAD + 1)}
        v = MASKED_VISIBLE
        self._heads = {s[:i] for s in self.secrets for i in range(v, len(s) + 1)}
        self._tails = {s[-i:] for s in self.secrets for i in range(v, len(s) + 1)}

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def redact(self, text: str, replacement: str) -> str:
        """``text`` with every piece of a secret (see the module docstring) replaced."""
        if not self.secrets:
            return text
        return self._redact_runs(self._redact_masked(text, replacement), replacement)

    def _redact_masked(self, text: str, replacement: str) -> str:
        if "***" not in text and "..." not in text and "…" not in text:
            return text  # the common case, at the speed of a substring search
        out, last = [], 0
        for mask in _MASK.finditer(text):
            if mask.start() < last:
                continue
            head_m = _HEAD.search(text, max(last, mask.start() - _LONGEST_HEAD), mask.start())
            tail_m = _TAIL.match(text, mask.end())
            start = head_m.start() if head_m else mask.start()
            end = tail_m.end() if tail_m else mask.end()
            head, tail = text[start:mask.start()], text[mask.end():end]
            if head in self._heads or tail in self._tails:  # both hold MASKED_VISIBLE+ characters
                out += [text[last:start], replacement]
                last = end
        return "".join(out) + text[last:] if out else text

    def _redact_runs(self, text: str, replacement: str) -> str:
        n, grams, quads = FRAGMENT_LENGTH, self._grams, self._quads
        if len(text) < n or not grams:
            return text
        # a piece of FRAGMENT_LENGTH holds a _QUAD-run starting at a multiple of _QUAD: probe
        # only those, then look at the few places around each probe that hit
        probes = [i for i in range(0, len(text) - _QUAD + 1, _QUAD) if text[i:i + _QUAD] in quads]
        if not probes:
            return text
        starts = sorted({j for i in probes for j in range(max(0, i + _QUAD - n), min(i, len(text) - n) + 1)})
        hits = [j for j in starts if text[j:j + n] in grams]
        if not hits:
            return text
        spans: list[list[int]] = []
        for i in hits:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + n
            else:
                spans.append([i, i + n])
        out, last = [], 0
        for start, end in spans:
            out.append(text[last:start])
            out.append(replacement)
            last = end
        out.append(text[last:])
        return "".join(out)
