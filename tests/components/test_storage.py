"""components.io.storage: one interface over a folder and S3 (a real moto_server), atomic, retried."""

from __future__ import annotations

import os
import uuid

import pytest

from components.io.storage import LocalStore, ObjectNotFound, S3Store, StorageError, open_store


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture
def bucket(s3_env) -> str:
    import boto3

    name = f"p4d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _exercise(store) -> None:
    assert store.list() == [] and not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"one")
    store.put_bytes("a/c.bin", b"two")
    store.put_bytes("z.json", b"{}")
    assert store.get_bytes("a/b.bin") == b"one" and store.exists("a/b.bin")
    assert store.list() == ["a/b.bin", "a/c.bin", "z.json"]
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    store.put_bytes("a/b.bin", b"replaced")
    assert store.get_bytes("a/b.bin") == b"replaced"
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # deleting twice is fine
    assert store.list() == ["a/c.bin", "z.json"]
    with pytest.raises(ObjectNotFound, match="a/b.bin"):
        store.get_bytes("a/b.bin")
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is also a FileNotFoundError
        store.get_bytes("missing")


def test_local_store_round_trip(tmp_path):
    store = open_store(tmp_path / "root")
    assert isinstance(store, LocalStore)
    _exercise(store)
    assert oct((tmp_path / "root" / "z.json").stat().st_mode & 0o777) == oct(0o644)


def test_local_write_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_bytes("k.bin", b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left"):
        store.put_bytes("k.bin", b"new")
    monkeypatch.undo()
    assert store.get_bytes("k.bin") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.bin"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_are_rejected(tmp_path, key):
    with pytest.raises(ValueError, match="relative path"):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_unknown_scheme_is_rejected():
    with pytest.raises(StorageError, match="unsupported storage scheme"):
        open_store("gs://bucket/x")


def test_s3_round_trip_on_moto(bucket):
    store = open_store(f"s3://{bucket}/some/prefix/")
    assert isinstance(store, S3Store) and store.uri == f"s3://{bucket}/some/prefix"
    _exercise(store)
    assert store.url("z.json") == f"s3://{bucket}/some/prefix/z.json"
    # Keys live under the prefix, nothing outside it.
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["some/prefix/a/c.bin", "some/prefix/z.json"]


def test_s3_missing_bucket_fails_at_once_naming_bucket_and_key(s3_env):
    store = open_store("s3://no-such-bucket-p4d/x", retries=5, backoff_s=10.0)  # a retry would take >= 5 s
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-p4d', key 'x/k.bin'.*NoSuchBucket"):
        store.put_bytes("k.bin", b"data")


def test_s3_unreachable_endpoint_is_retried_then_fails(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store("s3://bucket/p", retries=2, backoff_s=0.01)
    with pytest.raises(StorageError, match=r"bucket 'bucket', key 'p/k.bin' after 3 attempts"):
        store.put_bytes("k.bin", b"data")


def test_s3_transient_server_errors_are_retried(bucket, monkeypatch):
    from botocore.exceptions import ClientError

    store = open_store(f"s3://{bucket}", retries=3, backoff_s=0.01)
    real_put = store._client.put_object
    calls = []

    def flaky_put(**kwargs):
        calls.append(kwargs["Key"])
        if len(calls) <= 2:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(store._client, "put_object", flaky_put)
    store.put_bytes("k.bin", b"data")
    assert calls == ["k.bin"] * 3 and store.get_bytes("k.bin") == b"data"


def test_s3_failed_upload_leaves_no_object(bucket, monkeypatch):
    from botocore.exceptions import ClientError

    store = open_store(f"s3://{bucket}", retries=1, backoff_s=0.01)

    def always_fails(**kwargs):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                           "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject")

    monkeypatch.setattr(store._client, "put_object", always_fails)
    with pytest.raises(StorageError, match="after 2 attempts"):
        store.put_bytes("shard.tar", b"x" * 1000)
    monkeypatch.undo()
    assert not store.exists("shard.tar") and store.list() == []
