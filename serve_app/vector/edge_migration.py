"""Edge chunk shards made before keyword search (a dense vector only) brought to the current layout (dense plus
the ``bm25`` keyword vector) when the store opens. Qdrant Edge cannot add a vector to a shard's segments (loading
it with the new config is refused as incompatible), so a new shard is built beside the old one and swapped in:

1. ``<shard>.migrating`` is created with the new config and payload indexes, and every chunk is copied into it:
   same id, payload and dense vector (no re-embedding), plus the BM25 vector of its payload text. Then it is
   indexed, flushed and closed.
2. Swap: ``<shard>`` is renamed to ``<shard>.replaced``, then ``<shard>.migrating`` to ``<shard>``, then
   ``<shard>.replaced`` is removed. Renames within a folder are atomic.

The old shard is only read until step 2. ``recover`` runs before every open and puts a crashed migration
right: a ``.migrating`` shard without ``.replaced`` is half-built (removed; the open migrates again); with
``.replaced`` present, the new shard was complete before the first rename, so the swap is finished."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from serve_app.vector.keywords import KeywordEncoder
from serve_app.vector.store import SPARSE_NAME

logger = logging.getLogger("ray.serve")

_PAGE = 256  # points per scroll page and per write of the copy


def building(path: Path) -> Path:
    return path.with_name(path.name + ".migrating")


def replaced(path: Path) -> Path:
    return path.with_name(path.name + ".replaced")


def has_keywords(qe, shard) -> bool:
    """The shard has the keyword vector. Asked of the engine itself (a query naming the vector, which a shard
    without it refuses) rather than read from the shard's files, whose format is Edge's own business."""
    try:
        shard.query(qe.QueryRequest(limit=1, query=qe.Query.Nearest(qe.SparseVector([0], [1.0]), using=SPARSE_NAME)))
    except Exception:  # noqa: BLE001 - Edge raises a plain Exception ("Not existing vector name"), no type to catch
        return False
    return True


def recover(path: Path) -> None:
    """Finish or undo a migration that a crash interrupted (see the module docstring)."""
    new, old = building(path), replaced(path)
    if old.exists():
        if not path.exists():  # the crash fell between the two renames: the new shard is complete
            (new if new.exists() else old).rename(path)
            _sync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    if new.exists():  # built partly, never swapped in: the old shard at ``path`` is still the real one
        logger.warning("vector store: discarding the half-built migration of %s", path.name)
        shutil.rmtree(new)


def migrate(qe, path: Path, old_shard, create, encoder: KeywordEncoder) -> None:
    """Copy the old-layout shard open at ``path`` into a new one made by ``create(new_path)`` (the current
    config and payload indexes), then swap it in. Closes ``old_shard`` (whatever happens); the caller loads
    ``path`` again."""
    new_path = building(path)
    logger.warning("vector store: adding keyword vectors to %s (a one-time copy of its chunks)", path.name)
    copied = 0
    try:
        new_shard = create(new_path)
        try:
            offset = None
            while True:
                req = qe.ScrollRequest(offset=offset, limit=_PAGE, with_payload=True, with_vector=True)
                points, offset = old_shard.scroll(req)
                if points:
                    new_shard.update(qe.UpdateOperation.upsert_points(_with_keywords(qe, points, encoder)))
                    copied += len(points)
                if offset is None:
                    break
            # Indexed now, as the old shard was, so the first searches after the swap are not brute force.
            new_shard.optimize()
            new_shard.flush()
        finally:
            new_shard.close()
    except BaseException:
        # A failure short of a crash cleans up at once (a crash leaves this to recover()).
        shutil.rmtree(new_path, ignore_errors=True)
        raise
    finally:
        old_shard.close()
    # The swap. A crash anywhere before the first rename leaves the old shard in place and a half-built
    # new one that recover() discards; after it, recover() completes the swap.
    path.rename(replaced(path))
    new_path.rename(path)
    _sync_dir(path.parent)
    shutil.rmtree(replaced(path))
    logger.warning("vector store: %s migrated, %d chunks with keyword vectors", path.name, copied)


def _with_keywords(qe, points, encoder: KeywordEncoder) -> list[Any]:
    sparse = encoder.documents([(p.payload or {}).get("text", "") for p in points])
    out = []
    for p, kw in zip(points, sparse, strict=True):
        # An old-layout point's vector reads back as the bare list of its unnamed dense vector.
        dense = p.vector[""] if isinstance(p.vector, dict) else p.vector
        vector = {"": dense, SPARSE_NAME: qe.SparseVector(kw.indices, kw.values)} if kw else {"": dense}
        out.append(qe.Point(p.id, vector, p.payload))
    return out


def _sync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a rename is a change of the folder, not of the files)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
