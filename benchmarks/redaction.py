"""Cost of log redaction per record: whole secret values plus pieces of them (fragments).

Every log record a worker writes goes through :class:`~router_jobs.secrets.redaction.Redactor`.
This measures one ``redact`` call on a typical provider error line and on a 4 KB traceback,
for pools of 10, 100 and 1,000 secrets of 51 characters.

    python -m benchmarks.redaction
"""

from __future__ import annotations

import secrets
import timeit

from router_jobs.secrets.redaction import Redactor

LINE = ("openai: 401 Incorrect API key provided: sk-proj-abcd****************************wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys.")
TRACE = ("Traceback (most recent call last):\n  File \"/srv/app/router_jobs/worker/executor.py\", line 210, "
         "in _call\n    reply = adapter.complete(creds, request)\n") * 30


def main() -> None:
    print("(run it on an idle machine: timings of a loaded one say little)")
    for n in (10, 100, 1000):
        red = Redactor(f"sk-proj-{secrets.token_urlsafe(32)}" for _ in range(n))
        for name, text in (("error line", LINE), ("4 KB traceback", TRACE[:4096])):
            runs = 2000 if len(text) < 1000 else 200
            per = timeit.timeit(lambda red=red, text=text: red.redact(text), number=runs) / runs  # type: ignore[misc]
            print(f"{n:5d} secrets, {name:15s}: {per * 1e6:8.1f} us per record")


if __name__ == "__main__":
    main()
