"""Background work repeated every few seconds in a thread of its own: how the local cloud makes
state durable without paying for it on every request (moto snapshots, the offline store)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicWork:
    """Calls `work` every `interval` seconds between start() and stop(). A failure is logged and
    the work tried again on the next tick."""

    def __init__(self, work: Callable[[], None], interval: float, name: str) -> None:
        self.work = work
        self.interval = interval
        self.name = name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Returns once the work in progress, if any, is done."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.work()
            except Exception:
                log.exception("%s failed; trying again in %s s", self.name, self.interval)
