"""Checkpoints in durable storage while training runs: a mirror of ``OUT/checkpoints`` on an object store.

A pod's disk dies with the pod. When a stage runs with a checkpoint store (``p4d train --checkpoint-uri``,
env ``P4D_CHECKPOINT_URI``; on the cluster ``p4d pipeline exec`` sets it to a prefix derived from the
pipeline run and the stage, the same for every retry), every checkpoint is uploaded as soon as it is
complete on disk, and a new attempt, on any node and with an empty output folder, resumes from the
newest complete checkpoint found there. Layout below the store's root::

    run.json                              the MLflow run record (components.train.run_record)
    metrics.jsonl                         per-iteration record, uploaded with each checkpoint
    checkpoints/ckpt-000000016384/...     every file of the local checkpoint folder
    checkpoints/ckpt-000000016384/COMPLETE  uploaded last; a checkpoint without it is never read

Objects appear whole (components.io.storage), so "COMPLETE present" means every other file of that
checkpoint was uploaded before it. Deleting goes the other way round: the marker first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from components.io.storage import Store, open_store
from components.train.checkpoint import COMPLETE, PREFIX, TMP_PREFIX

CHECKPOINTS = "checkpoints"
CHECKPOINT_URI_ENV = "P4D_CHECKPOINT_URI"


class CheckpointMirror:
    """Upload, list, download and delete checkpoints on one store (used by rank 0 only)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, uri: str, endpoint_url_env: str = "AWS_ENDPOINT_URL") -> "CheckpointMirror":
        return cls(open_store(uri, endpoint_url_env=endpoint_url_env))

    @property
    def uri(self) -> str:
        return self.store.uri

    def _key(self, name: str, rel: str = "") -> str:
        return f"{CHECKPOINTS}/{name}/{rel}" if rel else f"{CHECKPOINTS}/{name}"

    def upload(self, folder: Path) -> None:
        """Every file of the complete local checkpoint ``folder``, then its COMPLETE marker."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE)
        for path in files:
            self.store.put_file(self._key(folder.name, path.relative_to(folder).as_posix()), path)
        self.store.put_bytes(self._key(folder.name, COMPLETE), b"ok\n")

    def complete(self) -> list[str]:
        """Names of the complete checkpoints in the store, oldest first."""
        names = set()
        for key in self.store.list(f"{CHECKPOINTS}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == COMPLETE and parts[1].startswith(PREFIX):
                names.add(parts[1])
        return sorted(names)

    def download(self, name: str, root: Path) -> Path:
        """Checkpoint ``name`` into ``root/name``, visible only once every file (COMPLETE last) is there."""
        final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = f"{self._key(name)}/"
        keys = [k for k in self.store.list(prefix) if k != prefix + COMPLETE]
        for key in keys:
            self.store.get_file(key, tmp / key[len(prefix):])
        (tmp / COMPLETE).write_text("ok\n")
        os.replace(tmp, final)
        return final

    def remove(self, name: str) -> None:
        """Delete a checkpoint: its marker first, so a kill part-way leaves an incomplete (never read) one."""
        prefix = f"{self._key(name)}/"
        self.store.delete(prefix + COMPLETE)
        for key in self.store.list(prefix):
            self.store.delete(key)

    def prune(self, keep: int) -> None:
        for name in self.complete()[:-keep]:
            self.remove(name)

    def put_file(self, name: str, path: Path) -> None:
        self.store.put_file(name, path)

    def get_file(self, name: str, path: Path) -> bool:
        """Download ``name`` to ``path``; False when the store has no such object."""
        if not self.store.exists(name):
            return False
        self.store.get_file(name, path)
        return True


def checkpoint_uri(given: str | None) -> str | None:
    """``--checkpoint-uri``, else env ``P4D_CHECKPOINT_URI``, else None (local checkpoints only)."""
    return given or os.environ.get(CHECKPOINT_URI_ENV) or None
