"""Leak scanning: find credentials in files, report file and line, never the value.

Two detectors run over every text file under the given paths: the ``detect-secrets`` engine
(its default plugins, in process: high-entropy strings, AWS/OpenAI/… key formats, private
keys, basic-auth URLs …) and exact matches of the configured keys' real values (pass them as
``known_secrets``, e.g. ``store.redactor.values``). A :class:`Finding` holds the file, the
line and the kind of secret only. ``routerctl scan`` wraps :func:`scan_paths`; :func:`main`
is a standalone entry point with the same output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             "node_modules", ".venv", "venv", ".tox"}
MAX_FILE_BYTES = 5_000_000
KNOWN_KIND = "configured API key value"


@dataclass(frozen=True, order=True)
class Finding:
    """One leaked credential: where, and what kind. Never the value."""

    file: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}"


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every regular file under ``paths`` (skipping VCS, cache and virtualenv folders)."""
    for p in map(Path, paths):
        if p.is_file():
            yield p
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for name in sorted(files):
                    yield Path(root) / name


def _is_text(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return False
        with path.open("rb") as fh:
            return b"\0" not in fh.read(8192)
    except OSError:
        return False


def _exact(path: Path, secrets: Sequence[str]) -> list[Finding]:
    out: list[Finding] = []
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if any(s in line for s in secrets):
                    out.append(Finding(str(path), n, KNOWN_KIND))
    except OSError:
        pass
    return out


def _detect_secrets(files: list[Path]) -> list[Finding]:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    collection = SecretsCollection()
    with default_settings():
        for f in files:
            collection.scan_file(str(f))
    return [Finding(filename, int(secret.line_number or 0), str(secret.type)) for filename, secret in collection]


def scan_paths(paths: Iterable[str | os.PathLike[str]], known_secrets: Iterable[str] = (),
               *, use_detect_secrets: bool = True) -> list[Finding]:
    """Scan files and folders; findings sorted by file and line, one per (file, line, kind)."""
    secrets = [s for s in known_secrets if s and len(s) >= 6]
    files = [f for f in iter_files(paths) if _is_text(f)]
    found: set[Finding] = set()
    for f in files:
        if secrets:
            found.update(_exact(f, secrets))
    if use_detect_secrets and files:
        found.update(_detect_secrets(files))
    return sorted(found)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m router_jobs.secrets.scan PATH... [--fail-on-found]``; known values from ``API_KEY_*``.

    Exit status 1 when something was found and ``--fail-on-found`` was given, else 0.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    fail = "--fail-on-found" in args
    paths = [a for a in args if a != "--fail-on-found"] or ["."]
    known = [v for k, v in os.environ.items() if k.startswith("API_KEY_")]
    findings = scan_paths(paths, known)
    for f in findings:
        print(f)
    print(f"{len(findings)} finding(s)", file=sys.stderr)
    return 1 if (fail and findings) else 0


if __name__ == "__main__":
    sys.exit(main())
