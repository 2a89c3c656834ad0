"""``run``: render the sharded multi-view dataset, resumable shard by shard, to a folder or S3.

A shard is either complete and listed in ``index.json`` or absent for readers: the tar is written
atomically (``components.io.storage``) and only then added to the index (itself rewritten
atomically). A crash between the two leaves an unlisted tar that the next run overwrites with the
same bytes, because shard s depends only on the settings fingerprint: identity i's conditions come
from (seed, i) and shard s's render noise from (seed, s).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from components.assets.check import AssetError, BundleInfo, require_assets
from components.assets.policy import refuse_synthetic_outside_tiny
from components.config import P4DConfig
from components.errors import P4DError
from components.io.run_config import RUN_CONFIG_FILE, resume_refusal, run_config_text
from components.io.storage import Store, open_store
from components.synthesize.conditions import LabelPool, derive_seed, draw_identity, load_label_pool
from components.config.synthesize import SynthesizeConfig
from components.synthesize.sampler import SALT_RENDER, GenHeadSampler
from components.synthesize.shards import (
    INDEX_FILE,
    INDEX_FORMAT,
    SHARD_DIR,
    VIEW_FILES,
    dumps_index,
    encode_view,
    shard_name,
    sha256,
    tar_bytes,
    view_key,
)
from model.deformation import FlameHead
from model.networks.genhead import GenHead

REQUIRED_ASSETS = ["genhead", "flame_model"]


class SynthesisError(P4DError):
    """The output location holds something this run must not touch, or the run cannot proceed."""


def check_assets(asset_dir: str | Path, profile: str) -> BundleInfo:
    """Before any work: the GenHead and FLAME assets exist, load, and are real outside the tiny profile."""
    asset_dir = Path(asset_dir)
    if not asset_dir.is_dir():
        raise AssetError(f"asset directory {asset_dir} does not exist; see `p4d assets check --help`")
    refuse_synthetic_outside_tiny(asset_dir, profile)
    return require_assets(asset_dir, REQUIRED_ASSETS)


def load_models(asset_dir: str | Path, cfg: P4DConfig, device: str) -> tuple[GenHead, FlameHead]:
    """GenHead with the asset's weights and the FLAME head of the asset's FLAME model."""
    from components.assets.flame import load_flame_head
    from components.assets.networks import load_network

    genhead = load_network("genhead", asset_dir, cfg, device)
    return genhead, load_flame_head(asset_dir, cfg.networks.deformation).head


def _module_sha(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(synth: SynthesizeConfig, cfg: P4DConfig, pool: LabelPool, genhead: GenHead, head: FlameHead) -> dict:
    """Every input that changes a shard's bytes; a resumed run must match it exactly."""
    return {
        "synthesize": synth.model_dump(mode="json", exclude={"max_failure_ratio"}),
        "cameras": cfg.cameras.model_dump(mode="json"),
        "camera_mix_fitted_prob": cfg.camera_mix_fitted_prob,
        "truncation_psi": cfg.networks.genhead.truncation_psi,
        "labels_sha256": hashlib.sha256(pool.labels.numpy().tobytes()).hexdigest(),
        "genhead_sha256": _module_sha(genhead),
        "flame_head_sha256": _module_sha(head),
    }


@dataclass
class SynthesisSummary:
    out: str
    identities: int
    views: int
    shards: int
    shards_written: int
    images_written: int
    bytes: int
    bytes_written: int
    seconds: float
    labels: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images_written / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        skipped = self.labels.get("skipped", {})
        return [
            f"synthesized {self.identities} identities x {self.views // max(self.identities, 1)} views = "
            f"{self.views} images in {self.shards} shards -> {self.out}",
            f"this run wrote {self.shards_written} shards, {self.images_written} images ({self.bytes_written / 1e6:.1f} MB) "
            f"in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s); dataset {self.bytes / 1e6:.1f} MB",
            f"label rows: {self.labels.get('used_rows', 0)} used of {self.labels.get('total_rows', 0)}"
            + (f"; skipped: {', '.join(f'{n} x {why}' for why, n in skipped.items())}" if skipped else ""),
        ]


def _read_index(store: Store) -> dict | None:
    if not store.exists(INDEX_FILE):
        return None
    try:
        return json.loads(store.get_bytes(INDEX_FILE))
    except json.JSONDecodeError as err:
        raise SynthesisError(f"{store.url(INDEX_FILE)} is not valid JSON ({err}); remove the output or pick another --out")


def _check_resumable(existing: dict, fp: dict, store: Store) -> None:
    if existing.get("format") != INDEX_FORMAT:
        raise SynthesisError(f"{store.url(INDEX_FILE)} is not a synthesize index (format {existing.get('format')!r})")
    if existing.get("fingerprint") != fp:
        raise SynthesisError(resume_refusal(store.uri, existing.get("fingerprint", {}), fp,
                                            "resume with the same settings, or write to a new --out"))


def _index(fp: dict, synth: SynthesizeConfig, pool: LabelPool, entries: dict[int, dict], n_shards: int) -> dict:
    shards = [entries[s] for s in sorted(entries)]
    return {
        "format": INDEX_FORMAT,
        "complete": len(shards) == n_shards,
        "fingerprint": fp,
        "identities": synth.identities,
        "views_per_identity": synth.views,
        "shard_size": synth.shard_size,
        "num_shards": n_shards,
        "view_files": [f for f in VIEW_FILES if f != "triplane.npy" or synth.triplane_points],
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "identities": sum(e["identities"] for e in shards),
            "views": sum(e["views"] for e in shards),
            "bytes": sum(e["bytes"] for e in shards),
        },
        "labels": pool.summary(),
    }


def render_shard(sampler: GenHeadSampler, pool: LabelPool, cfg: P4DConfig, synth: SynthesizeConfig,
                 shard: int) -> tuple[bytes, int, int]:
    """(tar bytes, identities, views) of shard ``shard``."""
    first = shard * synth.shard_size
    count = min(synth.shard_size, synth.identities - first)
    conds = [draw_identity(pool, i, synth, cfg.cameras, cfg.camera_mix_fitted_prob, sampler.z_dim)
             for i in range(first, first + count)]
    views = [(cond, v) for cond in conds for v in range(synth.views)]
    renders = sampler.render(views, derive_seed(synth.seed, SALT_RENDER, shard)).to("cpu")
    labels = {cond.identity: cond.labels() for cond in conds}
    members = []
    for j, (cond, v) in enumerate(views):
        meta = {
            "identity": cond.identity,
            "view": v,
            "camera": cond.camera_meta(v),
            "c_cond": [float(x) for x in cond.c_cond],
            "sources": cond.sources,
        }
        triplane = None if renders.triplane is None else renders.triplane[j]
        files = encode_view(renders.image[j], renders.image_raw[j], renders.seg[j], renders.background[j],
                            renders.depth[j], labels[cond.identity][v], triplane, meta, synth.png_compress_level)
        key = view_key(cond.identity, v)
        members.extend((f"{key}.{ext}", data) for ext, data in files)
    return tar_bytes(members), count, len(views)


def run(
    cfg: P4DConfig,
    labels: Sequence[str | Path],
    out: str,
    assets: str | Path | None = None,
    *,
    synth: SynthesizeConfig | None = None,
    device: str = "cpu",
    models: tuple[GenHead, FlameHead] | None = None,
    progress: bool = True,
    on_shard_written: Callable[[dict], None] | None = None,
) -> SynthesisSummary:
    """Render ``synth.identities`` x ``synth.views`` images from the fitted ``labels`` into ``out``.

    ``models`` (GenHead, FlameHead) replaces loading them from ``assets`` (tests, notebooks).
    ``on_shard_written(entry)`` runs after each shard is indexed.
    """
    synth = synth or cfg.synthesize
    if models is None:
        if assets is None:
            raise SynthesisError("no --assets directory given: synthesize needs the GenHead and FLAME assets")
        check_assets(assets, cfg.profile)  # fail before any work
    pool = load_label_pool(labels)
    pool.check(synth.max_failure_ratio)
    store = open_store(out, endpoint_url_env=cfg.storage.endpoint_url_env)
    existing = _read_index(store)

    genhead, head = models if models is not None else load_models(assets, cfg, device)
    sampler = GenHeadSampler(genhead, head, synth, cfg.networks.genhead.truncation_psi, device)
    fp = fingerprint(synth, cfg, pool, genhead, head)
    n_shards = -(-synth.identities // synth.shard_size)
    done: dict[int, dict] = {}
    if existing is not None:
        _check_resumable(existing, fp, store)
        present = set(store.list(SHARD_DIR + "/"))
        done = {e["index"]: e for e in existing["shards"] if e["name"] in present}
    # the run's resolved config, with the settings it renders by (``synth`` may replace cfg.synthesize)
    store.put_bytes(RUN_CONFIG_FILE, run_config_text(cfg.model_copy(update={"synthesize": synth})).encode())

    start, written, images, bytes_written = time.perf_counter(), 0, 0, 0
    done_views = sum(e["views"] for e in done.values())
    with tqdm(total=synth.identities * synth.views, initial=done_views, unit="img", desc="synthesize",
              disable=not progress, dynamic_ncols=True) as bar:
        for s in range(n_shards):
            if s in done:
                continue
            data, n_identities, n_views = render_shard(sampler, pool, cfg, synth, s)
            store.put_bytes(shard_name(s), data)
            done[s] = {"index": s, "name": shard_name(s), "first_identity": s * synth.shard_size,
                       "identities": n_identities, "views": n_views, "bytes": len(data), "sha256": sha256(data)}
            store.put_bytes(INDEX_FILE, dumps_index(_index(fp, synth, pool, done, n_shards)))
            written, images, bytes_written = written + 1, images + n_views, bytes_written + len(data)
            bar.set_postfix(shard=f"{s + 1}/{n_shards}", refresh=False)
            bar.update(n_views)
            if on_shard_written is not None:
                on_shard_written(done[s])
    if existing is None or not existing.get("complete") or written:
        store.put_bytes(INDEX_FILE, dumps_index(_index(fp, synth, pool, done, n_shards)))
    seconds = time.perf_counter() - start
    totals = _index(fp, synth, pool, done, n_shards)["totals"]
    return SynthesisSummary(out=store.uri, identities=totals["identities"], views=totals["views"], shards=n_shards,
                            shards_written=written, images_written=images, bytes=totals["bytes"], bytes_written=bytes_written,
                            seconds=seconds, labels=pool.summary())
