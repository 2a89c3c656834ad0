"""Import the official Portrait4D(-v2) checkpoints by reading tensors only (no code from the files runs).

- :func:`read_official_pickle` reads a StyleGAN-style network pickle (``G``, ``D``, ``G_ema``, ...) as data.
- :func:`import_official` / :func:`import_state_dict` check keys and shapes against ``model/official_keys`` and write
  ``<out>.safetensors`` + ``<out>.json``.
- :func:`load_state_dict_file` reads any weights file (torch checkpoint, network pickle, safetensors), checked.
- :func:`write_mimic_official_pickle` writes pickles in the official format (synthetic assets, tests).
"""

from components.import_official.errors import KeyMismatchError, OfficialImportError, UnsafePickleError
from components.import_official.importer import ImportedWeights, import_official, import_state_dict, read_sidecar
from components.import_official.key_lists import KeyList, check_state_dict, load_key_list
from components.import_official.mimic import OfficialRecord, stand_in_module_src, write_mimic_official_pickle
from components.import_official.network_pickle import NetworkRecord, OfficialPickle, read_official_pickle
from components.import_official.weights_file import load_state_dict_file, read_torch_state_dict

__all__ = [
    "ImportedWeights",
    "KeyList",
    "KeyMismatchError",
    "NetworkRecord",
    "OfficialImportError",
    "OfficialPickle",
    "OfficialRecord",
    "UnsafePickleError",
    "check_state_dict",
    "import_official",
    "import_state_dict",
    "load_key_list",
    "load_state_dict_file",
    "read_official_pickle",
    "read_sidecar",
    "read_torch_state_dict",
    "stand_in_module_src",
    "write_mimic_official_pickle",
]
