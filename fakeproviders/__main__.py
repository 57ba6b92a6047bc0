"""``python -m fakeproviders``: run one fake provider server in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from fakeproviders.server import PROVIDERS, FakeProviderServer, KeyLimit


def _limit(text: str) -> tuple[str, KeyLimit]:
    name, _, spec = text.partition("=")
    values = dict(part.split(":", 1) for part in spec.split(",") if part)
    return name, KeyLimit(
        requests=int(values["rpm"]) if "rpm" in values else None,
        tokens=int(values["tpm"]) if "tpm" in values else None,
        window=float(values.get("window", 60)),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, serve until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m fakeproviders", description=__doc__)
    p.add_argument("--provider", choices=PROVIDERS, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--key", action="append", default=[], metavar="NAME=SECRET", help="an accepted key")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=rpm:N,tpm:N[,window:S]",
                   help="a rolling-window limit for key NAME ('*' for every key)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = p.parse_args(argv)
    keys = dict(k.split("=", 1) for k in args.key)
    server = FakeProviderServer(args.provider, keys, dict(_limit(x) for x in args.limit),
                                latency=args.latency, host=args.host, port=args.port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print(f"fake {args.provider} server at {server.base_url} ({len(keys)} keys)", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
