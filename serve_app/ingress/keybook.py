"""The API keys an ingress replica checks: the state store's (serve_app/state/keys.py), re-read within
``POLL_S`` of any change, so a key made, changed or revoked through one replica holds on every replica within
about a second.

Key checking is on once the store has held a key (revoked ones count: revoking the last key does not open the
API) or a key file is given; with neither, the public API is open, as before keys existed. The key file
(``$SERVE_APP_API_KEYS_FILE``) seeds the store: its keys that the store has never held are added at the
replica's start, and the store's rows win from then on (a key revoked or changed at run time stays so).

The store unreachable: the replica keeps the keys it last read and tries again every ``POLL_S``. A replica that
has never read them (``loaded`` false: started while the store does not answer, or before its schema is at
head, which the release controller brings it to when it starts) cannot know whether keys exist, so it answers
503 to every route but the health ones until it has (ingress/middleware/auth.py): it fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from serve_app.protocol.keys import KeyEntry
from serve_app.state import store
from serve_app.state.keys import KeyStore

logger = logging.getLogger("ray.serve")
POLL_S = 1.0


class KeyBook:
    def __init__(self, keys: KeyStore | None = None, seed: dict[str, KeyEntry] | None = None):
        """``keys``: the store's keys (None: only ``seed``, fixed). ``seed``: the key file's keys, by digest."""
        self.store = keys
        self._seed = seed
        # Digest -> entry; None while key checking is off.
        self.active: dict[str, KeyEntry] | None = dict(seed) if seed else None
        self.loaded = keys is None  # whether ``active`` says what the store holds
        self._version: int | None = None
        self._ready = False  # schema at head and the seed written
        self._task: asyncio.Task | None = None
        # The poll and a key route's read after its write run in threads: one at a time, so an older snapshot
        # never replaces a newer one.
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Read the store's keys when they changed (blocking: run in a thread). False: the store is not usable
        yet (schema not at head); raises SQLAlchemyError when it does not answer."""
        if self.store is None:
            return True
        with self._lock:
            return self._refresh(self.store)

    def _refresh(self, keys: KeyStore) -> bool:
        if not self._ready:
            if not store.at_head(keys.engine):
                return False
            if self._seed:
                keys.seed(list(self._seed.values()))
            self._ready = True
        if self._version is not None and keys.version() == self._version:
            return True
        version, ever, active = keys.snapshot()
        self.active = active if ever else None
        self._version = version
        self.loaded = True
        return True

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.refresh)
                if failing:
                    logger.info("API keys: the state store answers again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - whatever fails, the poll goes on (revocations must arrive)
                if not failing:
                    logger.warning("API keys: cannot read them from the state store (%s: %s); keeping the keys "
                                   "last read", type(exc).__name__, str(exc)[:200])
                failing = True
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        """Poll on the running event loop (the replica's); a second call does nothing."""
        if self.store is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
