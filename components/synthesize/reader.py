"""Read the synthesized shards (folder or s3://) as a torch IterableDataset, one item per identity.

Each epoch the shard list is shuffled with (seed, epoch) and dealt round-robin to the
``world_size x num_workers`` readers (rank r, DataLoader worker w gets slots r * workers + w), so
every identity is read exactly once per epoch across ranks and workers. Inside a reader, identities
pass through a shuffle buffer that mixes neighbouring shards. Ranks may get one shard more than
others; a trainer that needs equal step counts per rank should cap its steps per epoch.

An item (``decode=True``) holds the K views of one identity stacked on dim 0, so the default
DataLoader collate gives (B, K, ...): ``identity`` (int), ``image`` (K,3,S,S), ``image_raw``,
``seg`` (K,1,r,r), ``bg``, ``depth`` (K,1,r,r), ``label`` (K,437), ``triplane`` (K,N,3+C) when stored,
``camera_fitted`` (K,) bool; images in [-1, 1]. ``decode=False`` yields the raw per-view file bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from components.errors import P4DError
from components.io.storage import Store, open_store
from components.synthesize.shards import INDEX_FILE, INDEX_FORMAT, decode_view, iter_identities, sha256


class DatasetError(P4DError):
    """The synthesized dataset is missing, incomplete or corrupt."""


def read_index(store: Store) -> dict:
    try:
        index = json.loads(store.get_bytes(INDEX_FILE))
    except FileNotFoundError:
        raise DatasetError(f"{store.url(INDEX_FILE)}: no synthesized dataset here; run `p4d synthesize` first") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{store.url(INDEX_FILE)}: not valid JSON ({err})") from None
    if index.get("format") != INDEX_FORMAT:
        raise DatasetError(f"{store.url(INDEX_FILE)}: unknown format {index.get('format')!r}")
    return index


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def stack_views(identity: int, views: list[dict[str, bytes]]) -> dict:
    decoded = [decode_view(v) for v in views]
    item: dict = {"identity": identity}
    for name in decoded[0]:
        if name != "meta":
            item[name] = torch.stack([d[name] for d in decoded])
    item["camera_fitted"] = torch.tensor([d["meta"]["camera"]["source"] == "fitted" for d in decoded])
    return item


class ShardDataset(IterableDataset):
    """Identities of a synthesized dataset; call ``set_epoch`` before each epoch for a new order."""

    def __init__(self, uri: str, shuffle: bool = True, seed: int = 0, shuffle_buffer: int = 64,
                 rank: int | None = None, world_size: int | None = None, decode: bool = True,
                 verify: bool = False, allow_incomplete: bool = False,
                 endpoint_url_env: str = "AWS_ENDPOINT_URL") -> None:
        super().__init__()
        self.uri, self.endpoint_url_env = str(uri), endpoint_url_env
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, max(1, shuffle_buffer)
        dist_rank, dist_world = _distributed()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} must be in [0, world_size={self.world_size})")
        self.decode, self.verify = decode, verify
        self.epoch = 0
        index = read_index(open_store(self.uri, endpoint_url_env))
        if not index.get("complete") and not allow_incomplete:
            raise DatasetError(f"{self.uri}: synthesis is incomplete ({len(index['shards'])} of {index['num_shards']} "
                               "shards); resume `p4d synthesize` or pass allow_incomplete=True")
        self.shards = [(e["name"], e["sha256"]) for e in index["shards"]]
        self.num_identities = sum(e["identities"] for e in index["shards"])
        self.views_per_identity = index["views_per_identity"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for(self, worker: int, num_workers: int) -> list[tuple[str, str]]:
        """The shards that (this rank, ``worker``) reads this epoch."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        slots = self.world_size * num_workers
        return order[self.rank * num_workers + worker :: slots]

    def _identities(self, store: Store, shards: list[tuple[str, str]]) -> Iterator[tuple[int, list[dict]]]:
        for name, digest in shards:
            data = store.get_bytes(name)
            if self.verify and sha256(data) != digest:
                raise DatasetError(f"{store.url(name)}: sha256 differs from the index; the shard is corrupt")
            yield from iter_identities(data)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = open_store(self.uri, self.endpoint_url_env)  # per worker: boto3 clients do not cross processes
        source = self._identities(store, self.shards_for(worker, num_workers))
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
        buffer: list[tuple[int, list[dict]]] = []
        for entry in source:
            if not self.shuffle:
                yield self._item(entry)
                continue
            buffer.append(entry)
            if len(buffer) >= self.shuffle_buffer:
                yield self._item(buffer.pop(rng.randrange(len(buffer))))
        rng.shuffle(buffer)
        for entry in buffer:
            yield self._item(entry)

    def _item(self, entry: tuple[int, list[dict]]) -> dict:
        identity, views = entry
        return stack_views(identity, views) if self.decode else {"identity": identity, "views": views}
