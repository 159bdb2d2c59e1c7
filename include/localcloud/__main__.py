"""`python -m include.localcloud`: serve the local cloud in the foreground until Ctrl-C or SIGTERM.

Settings come from the environment: LOCALCLOUD_HOST (default 127.0.0.1), LOCALCLOUD_PORT
(default 4566), LOCALCLOUD_STATE (default .localcloud) and LOCALCLOUD_IAM ("enforce" checks every
request against IAM; default: everything allowed)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from include.localcloud.server import DEFAULT_PORT, DEFAULT_STATE_DIR, LocalCloud


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    host = os.environ.get("LOCALCLOUD_HOST", "127.0.0.1")
    port = int(os.environ.get("LOCALCLOUD_PORT", DEFAULT_PORT))
    state = os.environ.get("LOCALCLOUD_STATE", DEFAULT_STATE_DIR)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cloud = LocalCloud(state, host=host, port=port).start()
    except OSError as exc:
        print(f"local cloud: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"local cloud ready on {cloud.url} (state in {cloud.state_dir}); Ctrl-C stops it", flush=True)
    stop.wait()
    print("local cloud stopping...", flush=True)
    cloud.stop()
    print("local cloud stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
