"""Input data versions, data shards and the "last successful run" marker of scheduled retraining.

A *data version* is a digest of the listing of every input prefix (key, size, content hash: the S3
ETag, or the MD5 of a local file, as DVC does). A scheduled run first compares it, with the digest
of the run's params, to the marker the last successful run wrote; unchanged -> "nothing to do".
The marker is one small JSON object next to the data (S3 or a local folder), written last, atomically.

Shards: the first-level sub-prefixes of an input prefix (``raw/images/part-000/...``) are its shards,
one Kubeflow task each; a prefix with files directly under it is a single shard.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from components.errors import P4DError
from components.io.storage import StorageError, open_store, split_s3_uri


class DataVersionError(P4DError):
    """An input prefix cannot be listed or is empty; the message names it."""


@dataclass(frozen=True)
class Entry:
    key: str  # relative to the listed prefix, '/'-separated
    size: int
    digest: str  # S3 ETag or local MD5


@dataclass(frozen=True)
class Shard:
    name: str
    uri: str
    version: str
    index: int
    seed: int
    identities: int  # the shard's share of the synthesized identities


def _md5(path: Path) -> str:
    h = hashlib.md5()  # same content hash as DVC and single-part S3 ETags; not a security use
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _list_local(root: Path) -> list[Entry]:
    if not root.is_dir():
        raise DataVersionError(f"{root}: no such input folder")
    return [
        Entry(p.relative_to(root).as_posix(), p.stat().st_size, _md5(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def _list_s3(uri: str, endpoint_url_env: str) -> list[Entry]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    prefix = f"{prefix}/" if prefix else ""
    client = boto3.session.Session().client("s3", endpoint_url=os.environ.get(endpoint_url_env) or None)
    entries = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix) :]
                if key and not key.endswith("/"):
                    entries.append(Entry(key, int(obj["Size"]), obj["ETag"].strip('"')))
    except (BotoCoreError, ClientError) as err:
        raise DataVersionError(f"{uri}: cannot list ({err})") from None
    return sorted(entries, key=lambda e: e.key)


def list_entries(uri: str, endpoint_url_env: str = "AWS_ENDPOINT_URL") -> list[Entry]:
    """Every file under a local folder or S3 prefix (hidden local files skipped), sorted by key."""
    entries = _list_s3(uri, endpoint_url_env) if uri.startswith("s3://") else _list_local(Path(uri))
    if not entries:
        raise DataVersionError(f"{uri}: no input files; put the data there (one sub-prefix per shard) or fix the URI")
    return entries


def version_of(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.key}\t{e.size}\t{e.digest}\n".encode())
    return h.hexdigest()[:16]


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}/"


def _salted(version: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{version}".encode()).hexdigest()[:16] if salt else version


def split_shards(uri: str, entries: list[Entry], identities: int = 0, seed: int = 0, salt: str = "") -> list[Shard]:
    """Shards of one input prefix; ``identities`` is divided over them (the first ones get the rest).

    A shard's version (its tasks' cache key) covers its own files and ``salt`` (the assets' version).
    """
    if any("/" not in e.key for e in entries):
        groups = {"": entries}  # files at the top level: the prefix is one shard
    else:
        groups = {}
        for e in entries:
            groups.setdefault(e.key.split("/", 1)[0], []).append(e)
    n = len(groups)
    shards = []
    for i, (name, group) in enumerate(sorted(groups.items())):
        share = identities // n + (1 if i < identities % n else 0)
        shards.append(
            Shard(name or "all", _join(uri, name) if name else uri, _salted(version_of(group), salt), i, seed + i, share)
        )
    return shards


def params_digest(params_text: str) -> str:
    return hashlib.sha256(params_text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    changed: bool
    reason: str


def _marker_location(marker_uri: str) -> tuple[str, str]:
    parent, _, name = marker_uri.rstrip("/").rpartition("/")
    if not name or not parent:
        raise DataVersionError(f"marker {marker_uri!r}: expected a file path or s3://BUCKET/KEY")
    return parent, name


def read_marker(marker_uri: str) -> dict | None:
    parent, name = _marker_location(marker_uri)
    store = open_store(parent)
    try:
        if not store.exists(name):
            return None
        return json.loads(store.get_bytes(name))
    except (StorageError, ValueError) as err:
        raise DataVersionError(f"marker {marker_uri}: cannot read ({err})") from None


def write_marker(marker_uri: str, data_version: str, params_sha: str, run_id: str) -> dict:
    record = {
        "data_version": data_version,
        "params_digest": params_sha,
        "run_id": run_id,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    parent, name = _marker_location(marker_uri)
    open_store(parent).put_bytes(name, json.dumps(record, indent=2).encode())  # atomic on both backends
    return record


def decide(data_version: str, params_sha: str, marker: dict | None, force: bool = False) -> Decision:
    """Run the pipeline unless the data and the params equal those of the last successful run."""
    if force:
        return Decision(True, "forced")
    if marker is None:
        return Decision(True, "no successful run recorded yet")
    if marker.get("data_version") != data_version:
        return Decision(True, f"input data changed ({marker.get('data_version')} -> {data_version})")
    if marker.get("params_digest") != params_sha:
        return Decision(True, "params changed since the last successful run")
    return Decision(
        False,
        f"nothing to do: input data version {data_version} and params are unchanged since the last "
        f"successful run {marker.get('run_id', '?')} ({marker.get('finished', '?')})",
    )


def shards_as_items(shards: list[Shard]) -> list[dict]:
    """The ParallelFor items (plain JSON dicts)."""
    return [asdict(s) for s in shards]


@dataclass(frozen=True)
class RunPlan:
    data_version: str
    decision: Decision
    shards: dict[str, list[Shard]]


def synthesis_plan(params: dict) -> tuple[int, int]:
    """(identities, seed) of the synthesize stage for these params (its section on top of the profile)."""
    from components.config import build_config

    cfg = build_config(params.get("profile", "tiny"), {"synthesize": params.get("synthesize") or {}}).synthesize
    return cfg.identities, cfg.seed


def plan_run(
    sharded: dict[str, str], sources: dict[str, str], marker_uri: str, params_text: str, force: bool = False
) -> RunPlan:
    """List every input, version it, split the sharded ones, and decide whether the run has work to do."""
    import yaml

    params = yaml.safe_load(params_text) or {}
    identities, seed = synthesis_plan(params)
    versions = {node: version_of(list_entries(uri)) for node, uri in sources.items()}
    salt = version_of([Entry(n, 0, v) for n, v in sorted(versions.items())]) if versions else ""
    shards = {}
    for node, uri in sharded.items():
        entries = list_entries(uri)
        versions[node] = version_of(entries)
        shards[node] = split_shards(uri, entries, identities, seed, salt)
    data_version = version_of([Entry(n, 0, v) for n, v in sorted(versions.items())])
    decision = decide(data_version, params_digest(params_text), read_marker(marker_uri), force)
    return RunPlan(data_version, decision, shards)
