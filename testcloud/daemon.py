"""The background test cloud: ``python -m testcloud.daemon --state-dir DIR [--driver D] [--ports auto]``.

SIGTERM/SIGINT: stop, stopping every guest (their VMs are left POWEROFF) and the bridge if unused.
SIGUSR1: stop but leave the guests running, for the next start to re-attach them (a restart).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from hostkit.fileio import write_atomic
from testcloud import launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testcloud.daemon")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--driver", default="auto")
    parser.add_argument("--ports", default="auto", help="auto, default, or a JSON object of service -> port")
    parser.add_argument("--ssh-public-key", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ports = args.ports if args.ports in ("auto", "default") else json.loads(args.ports)
    state_dir = args.state_dir.resolve()
    stop = threading.Event()
    keep_guests = {"value": False}

    def on_signal(number: int, _frame: object) -> None:
        keep_guests["value"] = number == signal.SIGUSR1
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(number, on_signal)
    write_atomic(state_dir / "daemon.pid", f"{os.getpid()}\n".encode(), 0o600)
    handle = launcher.start(state_dir, ports=ports, driver=args.driver, ssh_public_key=args.ssh_public_key)
    logging.getLogger("testcloud").info(
        "test cloud up: %s", {k: v for k, v in handle.endpoints.items() if k != "auth"}
    )
    try:
        stop.wait()
    finally:
        handle.stop(keep_guests=keep_guests["value"])  # and the bridge, when no other cloud uses it
        (state_dir / "daemon.pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
