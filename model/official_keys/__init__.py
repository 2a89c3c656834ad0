"""Expected state-dict key -> shape lists of the official Portrait4D(-v2) networks and auxiliary weights.

Each ``<name>.json`` holds ``{"source", "keys", "dtypes", "buffers", "init", "counts", "notes"}`` with ``keys`` in
``module.state_dict()`` order; a ``null`` dimension depends on the user's FLAME files (see ``data_dependent``).
``kwargs.json`` holds the init kwargs and rendering kwargs the released pickles carry.
Derived from the official code (YuDeng/Portrait-4D, MIT) by instantiating its classes; see each file's ``notes``.
"""
from pathlib import Path

OFFICIAL_KEYS_DIR = Path(__file__).resolve().parent
