"""The API keys an ingress replica checks: the state store's (serve_app/state/keys.py), re-read within
``POLL_S`` of any change, so a key made, changed or revoked through one replica holds on every replica within
about a second.

Key checking is on once the store has held a key (revoked ones count: revoking the last key does not open the
API) or a key file is given; with neither, the public API is open, as before keys existed. The key file
(``$SERVE_APP_API_KEYS_FILE``) seeds the store: its keys that the store has never held are added at the
replica's start, and the store's rows win from then on (a key revoked or changed at run time stays so).

The store unreachable: the replica keeps the keys it last read (or the file's, when it never read any) and
tries again every ``POLL_S``. A store whose schema is not at head yet (the release controller migrates it when
it starts) counts as not there yet.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError

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
        self._version: int | None = None
        self._ready = False  # schema at head and the seed written
        self._task: asyncio.Task | None = None

    def refresh(self) -> bool:
        """Read the store's keys when they changed (blocking: run in a thread). False: the store is not usable
        yet (schema not at head); raises SQLAlchemyError when it does not answer."""
        if self.store is None:
            return True
        if not self._ready:
            if not store.at_head(self.store.engine):
                return False
            if self._seed:
                self.store.seed(list(self._seed.values()))
            self._ready = True
        if self._version is not None and self.store.version() == self._version:
            return True
        version, ever, active = self.store.snapshot()
        self.active = active if ever else None
        self._version = version
        return True

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.refresh)
                if failing:
                    logger.info("API keys: the state store answers again")
                failing = False
            except (SQLAlchemyError, OSError) as exc:
                if not failing:
                    logger.warning("API keys: the state store does not answer (%s); keeping the keys last read",
                                   type(exc).__name__)
                failing = True
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        """Poll on the running event loop (the replica's); a second call does nothing."""
        if self.store is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
