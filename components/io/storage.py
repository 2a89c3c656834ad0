"""One object-store interface for a local folder or an S3 prefix (boto3), so every stage writes either.

``open_store("runs/x")`` or ``open_store("s3://bucket/prefix")`` gives a :class:`Store` whose keys are
``/``-separated paths below that root. Writes are all-or-nothing for a reader:

- local: a temporary sibling file, fsynced, then renamed over the key (``components.io.atomic``);
- S3: one ``PutObject`` with a Content-MD5; S3 stores an object only once the whole body arrived and
  matched, so a failed or interrupted upload leaves the key absent (or its previous version).

S3 calls that fail transiently (connection errors, timeouts, 5xx, throttling) are retried with
exponential backoff; after the last try, or at once on a permanent error (no such bucket, access
denied), a :class:`StorageError` names the bucket and key. The endpoint comes from the environment
variable named by ``endpoint_url_env`` (``AWS_ENDPOINT_URL`` by default: MinIO, moto); credentials are
never passed in code: boto3 reads them from the environment.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from components.errors import P4DError
from components.io.atomic import atomic_path

T = TypeVar("T")

# S3 error codes that a later retry can fix (AWS + MinIO spellings).
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "OperationAborted",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


class StorageError(P4DError):
    """An object-store operation failed; the message names the store location and the key."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The key does not exist."""


class Store(Protocol):
    """What every stage may do with object storage. Keys are relative, ``/``-separated."""

    uri: str

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, key: str, path: str | os.PathLike) -> None: ...

    def get_file(self, key: str, path: str | os.PathLike) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key!r} must be a relative path without '.', '..' or empty parts")
    return key


class LocalStore:
    """A folder; temp files (``.<name>.*.tmp``) of unfinished writes are never listed."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def url(self, key: str) -> str:
        return str(self._path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            with atomic_path(self._path(key)) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; datasets are read by other users and containers
        except OSError as err:
            raise StorageError(f"cannot write {self.url(key)}: {err.strerror or err}") from err

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Copy a file in under ``key`` (streamed: checkpoint shards are larger than memory should hold)."""
        import shutil

        try:
            with atomic_path(self._path(key)) as tmp:
                with open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
        except OSError as err:
            raise StorageError(f"cannot copy {path} to {self.url(key)}: {err.strerror or err}") from err

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        import shutil

        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(f"{source}: no such object")
        try:
            with atomic_path(path) as tmp:
                shutil.copyfile(source, tmp)
        except OSError as err:
            raise StorageError(f"cannot copy {source} to {path}: {err.strerror or err}") from err

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{path}: no such object") from None
        except OSError as err:
            raise StorageError(f"cannot read {path}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:  # folders exist only to hold keys, as on S3: drop the ones left empty
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix") (no trailing slash)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: expected s3://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


def _is_transient(err: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

    if isinstance(err, (BotoConnectionError, HTTPClientError)):
        return True  # endpoint unreachable, connection reset, read/connect timeouts
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


def _is_not_found(err: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(err, ClientError):
        return False
    code = str(err.response.get("Error", {}).get("Code", ""))
    return code in _NOT_FOUND_CODES


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    # 64 MiB parts, a few in parallel: a multi-GB optimizer shard uploads in minutes, memory stays bounded
    return TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)


class S3Store:
    """An S3 bucket + prefix through boto3. Thread-safe (one boto3 client, which is thread-safe)."""

    def __init__(
        self,
        uri: str,
        endpoint_url: str | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = split_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Retries are ours (below), so botocore does one attempt per call and we decide what is transient.
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient errors; a final failure names bucket, key and cause."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as err:  # botocore raises many unrelated classes; classify below
                if _is_not_found(err):
                    raise ObjectNotFound(f"{self.url(key)}: no such object") from None
                from boto3.exceptions import S3UploadFailedError
                from botocore.exceptions import BotoCoreError, ClientError

                if not isinstance(err, (BotoCoreError, ClientError, S3UploadFailedError)):
                    raise
                # a managed (multipart) upload wraps the cause in S3UploadFailedError: worth another try
                transient = _is_transient(err) or isinstance(err, S3UploadFailedError)
                if not transient or attempt >= self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise StorageError(
                        f"S3 {what} failed for bucket {self.bucket!r}, key {self._key(key)!r}{tries}: {err}. "
                        f"Check the endpoint (env AWS_ENDPOINT_URL), the bucket and the AWS_* credentials."
                    ) from err
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                time.sleep(delay)
                attempt += 1

    def put_bytes(self, key: str, data: bytes) -> None:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._call(
            "upload",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=md5),
        )

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a file of any size: boto3's managed transfer (multipart above 64 MiB; S3 shows the object
        only after the last part is committed, so a reader never sees part of it), retried as a whole."""
        self._call("upload", key, lambda: self._client.upload_file(str(path), self.bucket, self._key(key),
                                                                    Config=_transfer_config()))

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download to ``path`` through a temporary sibling: ``path`` appears only once complete."""

        def fetch() -> None:
            with atomic_path(path) as tmp:
                self._client.download_file(self.bucket, self._key(key), str(tmp), Config=_transfer_config())

        self._call("download", key, fetch)

    def get_bytes(self, key: str) -> bytes:
        def fetch() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._call("download", key, fetch)

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def fetch() -> list[str]:
            keys = []
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
            for page in pages:
                keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix or ".", fetch))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))


def open_store(
    uri: str | os.PathLike,
    endpoint_url_env: str = "AWS_ENDPOINT_URL",
    retries: int = 5,
    backoff_s: float = 0.5,
) -> Store:
    """A :class:`LocalStore` for a path, an :class:`S3Store` for ``s3://bucket/prefix``."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        endpoint = os.environ.get(endpoint_url_env) or None
        return S3Store(text, endpoint_url=endpoint, retries=retries, backoff_s=backoff_s)
    if "://" in text:
        raise StorageError(f"{text!r}: unsupported storage scheme; use a local path or s3://BUCKET/PREFIX")
    return LocalStore(text)
