"""`python -m caducee.identity.standin --config FILE [--host H] [--port P]`: run the stand-in.

SIGUSR1 rotates every realm's signing key (the previous one stays published), so that a
relying party's handling of key rotation can be seen; SIGTERM and SIGINT stop it, and so
does the end of the process given as `--parent` (a `serve --demo` killed with SIGKILL
leaves no stand-in holding its port). Its first line on stdout, once the port is bound,
is its URL; a port already taken makes it exit with status 3.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from werkzeug.serving import make_server

from caducee.identity.standin.app import create_app
from caducee.identity.standin.config import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caducee.identity.standin", description="Local stand-in for Pro Santé Connect")
    parser.add_argument("--config", type=Path, required=True, help="JSON file of realms, clients and professionals")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0: any free port (the URL printed says which)")
    parser.add_argument("--parent", type=int, default=0, help="stop when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s standin %(levelname)s %(message)s")
    app, state = create_app(load(args.config))
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except (OSError, SystemExit) as error:  # werkzeug reports a taken port itself and exits
        if isinstance(error, SystemExit) or error.errno == errno.EADDRINUSE:
            print(f"port {args.port} is taken", file=sys.stderr)
            return 3
        raise

    if args.parent:

        def watch_parent() -> None:
            while os.getppid() == args.parent:
                time.sleep(0.5)
            server.shutdown()

        threading.Thread(target=watch_parent, daemon=True).start()

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
