"""Where a (re)started training stage continues from, and which MLflow run it writes to.

A start (a new pod of a retried Kubeflow task, ``dvc repro`` after a kill, ``p4d train --resume``) first
fetches what the durable store holds for the stage (components.train.durable) and the output folder
lacks, then walks the checkpoints newest first, local and stored together: a checkpoint only in the store
is downloaded; one that is unreadable or incomplete is skipped with the reason, and removed so that a
later save at the same image count writes it afresh. The first good one is resumed; with none it starts
from image 0 and says so. Every line goes to stdout prefixed ``resume:`` (the stage's log).

The run record ``OUT/run.json`` names the MLflow run the stage writes to. It is written (and uploaded)
before the first step, so a kill before the first checkpoint still leaves the run id behind: the next
start ends that run as KILLED and links it to its new run (components.io.tracking.TrackingRun.start).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from components.io.atomic import atomic_write_text
from components.io.storage import StorageError
from components.train.checkpoint import PREFIX, Checkpoints, problem
from components.train.durable import CheckpointMirror

RUN_RECORD = "run.json"
METRICS_FILE = "metrics.jsonl"  # the loop's per-iteration record (components.train.loop writes it)


def say(message: str) -> None:
    print(f"resume: {message}", file=sys.stdout, flush=True)


def fetch_records(out: Path, mirror: CheckpointMirror | None) -> None:
    """The run record and the per-iteration record from the store when this output folder lacks them."""
    if mirror is None:
        return
    for name in (RUN_RECORD, METRICS_FILE):
        if not (out / name).exists() and mirror.get_file(name, out / name):
            say(f"fetched {name} from {mirror.uri}")


def read_run_record(out: Path) -> dict:
    path = out / RUN_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a record that cannot be read links nothing; the run itself is not at stake


def write_run_record(out: Path, record: dict, mirror: CheckpointMirror | None) -> None:
    atomic_write_text(out / RUN_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    if mirror is not None:
        upload_quietly(mirror, lambda: mirror.put_file(RUN_RECORD, out / RUN_RECORD), RUN_RECORD)


def upload_quietly(mirror: CheckpointMirror, upload: Callable[[], None], what: str) -> bool:
    """Run ``upload``; a store that stays unreachable after its retries costs durability, not the run."""
    try:
        upload()
    except StorageError as err:
        print(f"warning: {what} was not uploaded to {mirror.uri}: {err}", file=sys.stderr, flush=True)
        return False
    return True


def candidates(checkpoints: Checkpoints, mirror: CheckpointMirror | None, skipped: list[str]) -> Iterator[Path]:
    """Good checkpoints, newest first, each a local folder (downloaded first when only the store has it);
    the names of the bad ones go to ``skipped``."""
    root = checkpoints.root

    def report(message: str) -> None:
        if message.startswith("skipped"):
            skipped.append(message.split()[1].rstrip(":"))
        say(message)

    local = {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)} if root.is_dir() else set()
    stored = set(mirror.complete()) if mirror is not None else set()
    for name in sorted(local | stored, reverse=True):
        path = root / name
        if name in local:
            reason = problem(path)
            if reason is None:
                yield path
                continue
            checkpoints.discard(path)
            if name not in stored:
                report(f"skipped {name}: {reason}; removed it")
                continue
            report(f"the local copy of {name} is bad ({reason}); fetching it again from {mirror.uri}")
        try:
            mirror.download(name, root)
        except StorageError as err:
            report(f"skipped {name}: could not download it from {mirror.uri} ({err})")
            continue
        reason = problem(path)
        if reason is None:
            report(f"fetched {name} from {mirror.uri}")
            yield path
            continue
        checkpoints.discard(path)
        mirror.remove(name)
        report(f"skipped {name}: {reason} (the copy in {mirror.uri}); removed it")
