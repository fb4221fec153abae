"""Checkpoints: reading and writing files, the Hugging Face Hub, config.json, the official key layouts.

    files.py        safetensors and weights-only .pth reading (never unpickles anything but tensors)
    hub.py          local paths, short names of the released files, Hub downloads and the offline cache
    config_json.py  config.json: the format, its validation, model <-> config
    official.py     the official key layouts (RWKV-6 "x060", RWKV-7 "x070", VisualRWKV v6.0), converted on loading
    families.py     the released VisualRWKV families (v6.0, HD, UHD, v7.00) recognised by keys and shapes
                    (FAMILIES, detect_family, check_family), with their loaders and exporters
    diff.py         the one state-dict comparison every loader uses
    pretrained.py   from_pretrained / save_pretrained / describe_checkpoint
    lm.py           language-model checkpoints (RWKV6, RWKV7): load_language_model, save_language_model,
                    describe_language_model

This package depends on the models and never the reverse: a model's ``from_pretrained`` is a thin entry
point that calls in here when it is called.
"""

from ..errors import CheckpointError, StateDictError
from .config_json import CONFIG_NAME, FORMAT_VERSION, TOKENIZER_NAME, WEIGHTS_NAME, load_config, parse_dtype
from .diff import check_state_dict, diff_state_dict
from .families import FAMILIES, check_family, detect_family
from .files import PROGRESS_MIN_BYTES, load_checkpoint, read_tensor_specs
from .hub import OFFICIAL_CHECKPOINTS, REPO_ID, resolve_checkpoint
from .lm import describe_language_model, load_language_model, save_language_model
from .official import OFFICIAL_PREFIXES, config_from_official_state_dict
from .pretrained import describe_checkpoint, from_pretrained, save_pretrained

__all__ = [
    "CheckpointError",
    "StateDictError",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "TOKENIZER_NAME",
    "FORMAT_VERSION",
    "load_config",
    "parse_dtype",
    "diff_state_dict",
    "check_state_dict",
    "PROGRESS_MIN_BYTES",
    "load_checkpoint",
    "read_tensor_specs",
    "REPO_ID",
    "OFFICIAL_CHECKPOINTS",
    "resolve_checkpoint",
    "OFFICIAL_PREFIXES",
    "config_from_official_state_dict",
    "from_pretrained",
    "save_pretrained",
    "describe_checkpoint",
    "FAMILIES",
    "detect_family",
    "check_family",
    "load_language_model",
    "save_language_model",
    "describe_language_model",
]
