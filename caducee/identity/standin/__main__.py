"""`python -m caducee.identity.standin --config FILE [--host H] [--port P]`: run the stand-in.

SIGUSR1 rotates every realm's signing key (the previous one stays published), so that a
relying party's handling of key rotation can be seen; SIGTERM and SIGINT stop it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from werkzeug.serving import make_server

from caducee.identity.standin.app import create_app
from caducee.identity.standin.config import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caducee.identity.standin", description="Local stand-in for Pro Santé Connect")
    parser.add_argument("--config", type=Path, required=True, help="JSON file of realms, clients and professionals")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s standin %(levelname)s %(message)s")
    app, state = create_app(load(args.config))
    server = make_server(args.host, args.port, app, threaded=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    def rotate(_signum: int, _frame: FrameType | None) -> None:
        state.rotate_keys()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, rotate)
    print(f"Pro Santé Connect stand-in on http://{args.host}:{server.server_port}/auth/realms/{state.config.realms[0]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
