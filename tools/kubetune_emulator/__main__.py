"""``python -m kubetune_emulator --port 0 --kubeconfig PATH``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from kubetune_emulator.runner import Emulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", help="where to write a kubeconfig (default: a temporary file)")
    parser.add_argument("--apply", action="append", default=[], metavar="FILE",
                        help="YAML manifests (e.g. CRDs) to load at start; repeatable")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Emulator(host=args.host, port=args.port, kubeconfig=args.kubeconfig) as emu:
        for path in args.apply:
            emu.apply_file(path)
        print(f"Kubernetes API emulator serving at {emu.url}", flush=True)
        print(f"kubeconfig: {emu.kubeconfig}", flush=True)
        while not stop.wait(0.5):
            pass
    print(f"stopped after {len(emu.requests)} requests", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
