"""Expected key -> shape lists (model/official_keys/*.json) and the checker every import goes through."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.import_official.errors import KeyMismatchError, OfficialImportError
from model.official_keys import OFFICIAL_KEYS_DIR

KeyShape = tuple  # tuple[int | None, ...]; None = depends on the user's FLAME files
MAX_LISTED = 4  # keys named per problem in one error line


@dataclass(frozen=True)
class KeyList:
    """An expected state dict: key -> shape (None dims are wildcards) and dtype, in state_dict order."""

    name: str
    keys: dict[str, KeyShape]
    dtypes: dict[str, str] = field(default_factory=dict)
    buffers: frozenset[str] = frozenset()
    extra_keys_allowed: bool = False
    subsets: dict[str, dict[str, KeyShape]] = field(default_factory=dict)

    def subset(self, name: str) -> KeyList:
        """A part of the list that a weights file may hold on its own; keys beyond it are dropped, not errors."""
        keys = self.subsets[name]
        dtypes = {k: v for k, v in self.dtypes.items() if k in keys}
        return KeyList(f"{self.name}:{name}", dict(keys), dtypes, extra_keys_allowed=True)


def load_key_list(name: str, keys_dir: str | Path | None = None) -> KeyList:
    path = Path(keys_dir or OFFICIAL_KEYS_DIR) / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OfficialImportError(f"cannot read key list {path}: {err}") from None
    keys = {k: tuple(v) for k, v in data["keys"].items()}
    subsets = {s: {k: tuple(v) for k, v in ks.items()} for s, ks in data.get("subsets", {}).items()}
    return KeyList(
        name=name,
        keys=keys,
        dtypes=dict(data.get("dtypes", {})),
        buffers=frozenset(data.get("buffers", ())),
        extra_keys_allowed=bool(data.get("extra_keys_allowed", False)),
        subsets=subsets,
    )


def _fmt(shape: Sequence) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def shape_matches(actual: Sequence[int], expected: Sequence) -> bool:
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected))


def _dtype_family(dtype: str) -> str:
    dtype = dtype.replace("torch.", "")
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("float", "bfloat", "half", "double")):
        return "float"
    if dtype.startswith("complex"):
        return "complex"
    return "int"


@dataclass
class KeyDiff:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]
    wrong_dtype: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.wrong_dtype)


def diff_state_dict(state: Mapping[str, torch.Tensor], expected: KeyList) -> KeyDiff:
    missing = [k for k in expected.keys if k not in state]
    unexpected = [] if expected.extra_keys_allowed else [k for k in state if k not in expected.keys]
    common = [k for k in expected.keys if k in state]
    wrong_shape = [k for k in common if not shape_matches(tuple(state[k].shape), expected.keys[k])]
    # float16 vs float32 is a precision choice; float vs int vs bool means a different tensor.
    wrong_dtype = [
        k
        for k in common
        if k in expected.dtypes and _dtype_family(str(state[k].dtype)) != _dtype_family(expected.dtypes[k])
    ]
    return KeyDiff(missing, unexpected, wrong_shape, wrong_dtype)


def describe_diff(diff: KeyDiff, state: Mapping[str, torch.Tensor], expected: KeyList) -> str:
    """One line naming the first few keys of each problem with expected/actual shapes."""

    def dtype(k: str) -> str:
        return str(state[k].dtype).replace("torch.", "")

    def want(k: str) -> str:
        return _fmt(expected.keys[k])

    problems = [
        ("missing", diff.missing, lambda k: f"{k!r} expected {want(k)}"),
        ("unexpected", diff.unexpected, lambda k: f"{k!r} {_fmt(state[k].shape)}"),
        ("wrong shape", diff.wrong_shape, lambda k: f"{k!r} is {_fmt(state[k].shape)}, expected {want(k)}"),
        ("wrong dtype", diff.wrong_dtype, lambda k: f"{k!r} is {dtype(k)}, expected {expected.dtypes[k]}"),
    ]
    parts = []
    for label, keys, fmt in problems:
        if keys:
            more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
            parts.append(f"{len(keys)} {label}: " + ", ".join(fmt(k) for k in keys[:MAX_LISTED]) + more)
    return "; ".join(parts)


def check_state_dict(state: Mapping[str, torch.Tensor], expected: KeyList, what: str) -> None:
    """Raise :class:`KeyMismatchError` naming keys and shapes unless ``state`` matches ``expected`` exactly."""
    diff = diff_state_dict(state, expected)
    if not diff.ok:
        raise KeyMismatchError(
            f"{what} does not match the '{expected.name}' key list ({len(expected.keys)} keys, "
            f"found {len(state)}): {describe_diff(diff, state, expected)}"
        )


def matching_key_lists(state: Mapping[str, torch.Tensor], candidates: Sequence[KeyList], what: str) -> list[KeyList]:
    """The candidates whose key NAMES equal ``state``'s; if none, raise with the diff against the closest one."""
    names = set(state)
    exact = [c for c in candidates if set(c.keys) == names or (c.extra_keys_allowed and set(c.keys) <= names)]
    if exact:
        return exact
    closest = max(candidates, key=lambda c: len(names & set(c.keys)) / max(len(names | set(c.keys)), 1))
    raise KeyMismatchError(
        f"{what} matches none of {[c.name for c in candidates]}; closest is '{closest.name}' "
        f"({len(closest.keys)} keys, found {len(state)}): "
        f"{describe_diff(diff_state_dict(state, closest), state, closest)}"
    )
