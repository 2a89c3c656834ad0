"""Data versions, shards and the scheduled run's "nothing to do" decision (local folders and S3 on moto)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.data_version import (
    DataVersionError, decide, list_entries, params_digest, plan_run, read_marker, split_shards, version_of,
    write_marker,
)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_version_follows_content_not_time(tmp_path):
    root = _tree(tmp_path / "raw", {"a/1.jpg": b"one", "a/2.jpg": b"two", ".hidden": b"x"})
    v1 = version_of(list_entries(str(root)))
    (root / "a/1.jpg").write_bytes(b"one")  # rewritten, same bytes
    assert version_of(list_entries(str(root))) == v1
    (root / "a/1.jpg").write_bytes(b"ONE")
    assert version_of(list_entries(str(root))) != v1
    assert [e.key for e in list_entries(str(root))] == ["a/1.jpg", "a/2.jpg"]


def test_missing_or_empty_input_is_named(tmp_path):
    with pytest.raises(DataVersionError, match="no such input folder"):
        list_entries(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataVersionError, match="no input files"):
        list_entries(str(tmp_path / "empty"))


def test_shards_are_sub_prefixes_and_split_the_identities(tmp_path):
    root = _tree(tmp_path / "raw", {f"part-{i}/x{j}.png": bytes([i, j]) for i in range(3) for j in range(2)})
    shards = split_shards(str(root), list_entries(str(root)), identities=10, seed=5, salt="assets-v1")
    assert [s.name for s in shards] == ["part-0", "part-1", "part-2"]
    assert [s.identities for s in shards] == [4, 3, 3] and [s.seed for s in shards] == [5, 6, 7]
    assert shards[1].uri == f"{root}/part-1/"
    assert len({s.version for s in shards}) == 3
    again = split_shards(str(root), list_entries(str(root)), identities=10, seed=5, salt="assets-v2")
    assert all(a.version != b.version for a, b in zip(shards, again))  # assets change -> every cache key changes
    flat = _tree(tmp_path / "flat", {"a.png": b"a", "sub/b.png": b"b"})
    [one] = split_shards(str(flat), list_entries(str(flat)), identities=3)
    assert one.uri == str(flat) and one.identities == 3


def test_decide():
    assert decide("v1", "p1", None).changed
    marker = {"data_version": "v1", "params_digest": "p1", "run_id": "r7", "finished": "t"}
    same = decide("v1", "p1", marker)
    assert not same.changed and same.reason.startswith("nothing to do") and "r7" in same.reason
    assert decide("v2", "p1", marker).reason.startswith("input data changed")
    assert decide("v1", "p2", marker).reason.startswith("params changed")
    assert decide("v1", "p1", marker, force=True).changed


def test_a_second_run_on_the_same_data_has_nothing_to_do(tmp_path):
    raw = _tree(tmp_path / "raw", {"part-0/a.png": b"a", "part-1/b.png": b"b"})
    assets = _tree(tmp_path / "assets", {"flame/generic_model.pkl": b"f"})
    marker = str(tmp_path / "markers" / "last-success.json")
    params = '{"profile": "tiny"}'
    first = plan_run({"raw_images": str(raw)}, {"assets": str(assets)}, marker, params)
    assert first.decision.changed and len(first.shards["raw_images"]) == 2
    write_marker(marker, first.data_version, params_digest(params), "run-1")
    second = plan_run({"raw_images": str(raw)}, {"assets": str(assets)}, marker, params)
    assert not second.decision.changed and "nothing to do" in second.decision.reason
    (raw / "part-2").mkdir()
    (raw / "part-2" / "c.png").write_bytes(b"c")
    third = plan_run({"raw_images": str(raw)}, {"assets": str(assets)}, marker, params)
    assert third.decision.changed and len(third.shards["raw_images"]) == 3


def test_prepare_and_mark_commands_write_kfp_outputs(tmp_path, capsys):
    raw = _tree(tmp_path / "raw", {"part-0/a.png": b"a"})
    marker, out = tmp_path / "m.json", tmp_path / "out"
    args = ["pipeline", "prepare", "--sharded", f"raw_images={raw}", "--shards-out", f"raw_images={out}/shards",
            "--marker", str(marker), "--params-text", '{"profile": "tiny"}', "--data-version-out", f"{out}/v",
            "--changed-out", f"{out}/c", "--reason-out", f"{out}/r"]
    assert main(args) == 0
    assert json.loads((out / "c").read_text()) is True
    [shard] = json.loads((out / "shards").read_text())
    assert shard["uri"] == f"{raw}/part-0/" and shard["identities"] > 0
    version = (out / "v").read_text()
    assert main(["pipeline", "mark", "--marker", str(marker), "--data-version", version,
                 "--params-text", '{"profile": "tiny"}', "--run-id", "run-9"]) == 0
    assert main(args) == 0
    assert json.loads((out / "c").read_text()) is False
    assert (out / "r").read_text().startswith("nothing to do")
    assert main(["pipeline", "nothing-to-do", "--reason", (out / "r").read_text()]) == 0
    assert "nothing to do: input data version" in capsys.readouterr().out
    assert main([*args[:-6], "--params-text", "profile: huge", *args[-6:]]) == 2  # invalid params: before any work


@pytest.fixture
def bucket(s3_server, monkeypatch) -> str:
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    name = f"p4d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_s3_listing_shards_and_marker(bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    for key in ("raw/images/part-000/a.jpg", "raw/images/part-001/b.jpg", "raw/images/part-001/c.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    uri = f"s3://{bucket}/raw/images/"
    entries = list_entries(uri)
    assert [e.key for e in entries] == ["part-000/a.jpg", "part-001/b.jpg", "part-001/c.jpg"]
    shards = split_shards(uri, entries, identities=5)
    assert [s.uri for s in shards] == [f"s3://{bucket}/raw/images/part-000/", f"s3://{bucket}/raw/images/part-001/"]
    marker = f"s3://{bucket}/pipeline/last-success.json"
    assert read_marker(marker) is None
    write_marker(marker, version_of(entries), "p", "run-3")
    assert read_marker(marker)["run_id"] == "run-3"
    assert not decide(version_of(entries), "p", read_marker(marker)).changed
    with pytest.raises(DataVersionError, match=f"s3://{bucket}-nope/x: cannot list"):
        list_entries(f"s3://{bucket}-nope/x")
