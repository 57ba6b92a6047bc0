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

_MASKED = re.compile(r"(?P<head>[A-Za-z0-9_\-]*)(?:\*{3,}|\.{3,}|…)(?P<tail>[A-Za-z0-9_\-]*)")


class FragmentIndex:
    """Every ``FRAGMENT_LENGTH``-character run of some secrets, to redact pieces of them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s)
        self._grams = {s[i:i + FRAGMENT_LENGTH] for s in self.secrets
                       for i in range(len(s) - FRAGMENT_LENGTH + 1)}

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def redact(self, text: str, replacement: str) -> str:
        """``text`` with every piece of a secret (see the module docstring) replaced."""
        if not self.secrets:
            return text
        text = _MASKED.sub(lambda m: replacement if self._masked_echo(m) else m.group(0), text)
        return self._redact_runs(text, replacement)

    def _masked_echo(self, m: re.Match[str]) -> bool:
        head, tail = m.group("head"), m.group("tail")
        return any((len(head) >= MASKED_VISIBLE and s.startswith(head))
                   or (len(tail) >= MASKED_VISIBLE and s.endswith(tail)) for s in self.secrets)

    def _redact_runs(self, text: str, replacement: str) -> str:
        n = FRAGMENT_LENGTH
        if len(text) < n or not self._grams:
            return text
        spans: list[list[int]] = []
        for i in range(len(text) - n + 1):
            if text[i:i + n] in self._grams:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + n
                else:
                    spans.append([i, i + n])
        if not spans:
            return text
        out, last = [], 0
        for start, end in spans:
            out.append(text[last:start])
            out.append(replacement)
            last = end
        out.append(text[last:])
        return "".join(out)
