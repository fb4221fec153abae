"""Attacks on loading, saving, state files, preprocessing, tokenizer files and the CLI, run in one child
process under a memory limit (RLIMIT_AS) and a time limit per attack (SIGALRM).

``python tests/adversarial/attacks.py WORKDIR`` prints one JSON line per attack: its name, the outcome
("ok": a correct result; "error": a library error, i.e. a ValueError/OSError subclass with a short
message; anything else is a finding), the exception type, the message and the seconds it took.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import rwkv_vision
from rwkv_vision.errors import RWKVVisionError
from rwkv_vision.models.visualrwkv import VisualRWKV
from rwkv_vision.state import RWKVState
from rwkv_vision.vision.preprocess import ImagePreprocessor, open_image

SHIPPED = Path(rwkv_vision.__file__).parent / "pretrained" / "shapes-vqa-tiny"
SECONDS = 10  # per attack
HEADROOM = 3 * 2**30  # bytes of address space an attack may add (a 336 x 1.7M RGB resize needs 1.7 GB)
ATTACKS = {}


def attack(fn):
    ATTACKS[fn.__name__] = fn
    return fn


class Timeout(BaseException):
    pass


def _copy(work: Path, name: str) -> Path:
    out = work / name
    shutil.copytree(SHIPPED, out)
    return out


def _edit_config(directory: Path, fn) -> Path:
    config = json.loads((directory / "config.json").read_text())
    fn(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of any claimed size whose pixel data is one tiny compressed stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (width + 1) * height, 9) if width * height < 10**7 else zlib.compress(b"\x00" * 16)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _add_junk_keys(path: Path, count: int) -> None:
    """Append ``count`` one-float tensors to a safetensors file, writing the header by hand (safetensors'
    save_file spends seconds on 50,000 tensors, which is the attack's setup, not the library's time)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    end = len(body)
    for i in range(count):
        header[f"junk.{i}"] = {"dtype": "F32", "shape": [1], "data_offsets": [end + 4 * i, end + 4 * i + 4]}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body + bytes(4 * count))


# --- loading ----------------------------------------------------------------------------------------------


@attack
def load_key_of_layer_20000(work):
    d = _copy(work, "l20000")
    sd = load_file(d / "model.safetensors")
    sd["rwkv.blocks.20000.att.key.weight"] = torch.zeros(1)
    save_file(sd, d / "model.safetensors")
    VisualRWKV.from_pretrained(d)


@attack
def load_official_key_of_layer_20000(work):
    path = VisualRWKV.from_pretrained(SHIPPED).save_pretrained(work / "o.safetensors")
    sd = load_file(path)
    sd["rwkv.blocks.20000.att.key.weight"] = torch.zeros(1)
    sd["vit.vision_model.encoder.layers.9999.mlp.fc1.weight"] = torch.zeros(1)
    save_file(sd, path)
    VisualRWKV.from_pretrained(path)


@attack
def load_n_layer_1e9(work):
    VisualRWKV.from_pretrained(_edit_config(_copy(work, "nl"), lambda c: c["rwkv"].update(n_layer=10**9)))


@attack
def load_n_layer_at_the_limit(work):
    VisualRWKV.from_pretrained(_edit_config(_copy(work, "nl2"), lambda c: c["rwkv"].update(n_layer=1024)))


@attack
def load_encoder_depth_huge(work):
    d = _copy(work, "depth")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["encoder"]["timm_kwargs"].update(depth=10**6)))


@attack
def load_encoder_width_huge(work):
    d = _copy(work, "width")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["encoder"]["timm_kwargs"].update(embed_dim=2**20)))


@attack
def load_encoder_img_size_huge(work):
    d = _copy(work, "img")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["encoder"]["timm_kwargs"].update(img_size=[2**20, 2**20])))


@attack
def load_encoder_reg_tokens_huge(work):
    d = _copy(work, "reg")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["encoder"]["timm_kwargs"].update(reg_tokens=10**8)))


@attack
def load_encoder_string_callable(work):
    d = _copy(work, "blockfn")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["encoder"]["timm_kwargs"].update(block_fn="os.system")))


@attack
def load_preprocessor_size_huge(work):
    d = _copy(work, "pre")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["preprocessor"].update(size=10**9, crop_size=10**9)))


@attack
def load_custom_scan_huge_permutation(work):
    d = _copy(work, "scan")
    VisualRWKV.from_pretrained(
        _edit_config(d, lambda c: c.update(scan={"name": "custom", "permutations": [[10**12, -5]] * 1000}))
    )


@attack
def load_safetensors_header_claims_huge_tensor(work):
    d = _copy(work, "hdr")
    header = json.dumps({"rwkv.emb.weight": {"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 2**62]}})
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    VisualRWKV.from_pretrained(d)


@attack
def load_safetensors_header_length_huge(work):
    d = _copy(work, "hdrlen")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    VisualRWKV.from_pretrained(d)


@attack
def load_safetensors_with_50000_keys(work):
    d = _copy(work, "keys")
    _add_junk_keys(d / "model.safetensors", 50000)
    VisualRWKV.from_pretrained(d)


@attack
def load_pickle_deeply_nested(work):
    path = work / "deep.pth"
    # protocol-2 pickle of a list nested 200,000 deep: EMPTY_LIST + APPEND chains
    path.write_bytes(b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".")
    VisualRWKV.from_pretrained(path)


@attack
def load_pickle_with_os_system(work):
    path = work / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(work / "pwned"),))

    torch.save({"x": Evil()}, path)
    try:
        VisualRWKV.from_pretrained(path)
    finally:
        assert not (work / "pwned").exists(), "code ran"


@attack
def load_json_bomb(work):
    d = _copy(work, "jsonbomb")
    (d / "config.json").write_text("[" * 10**6 + "]" * 10**6)
    VisualRWKV.from_pretrained(d)


@attack
def load_json_huge_integer(work):
    d = _copy(work, "bigint")
    text = (d / "config.json").read_text().replace('"n_layer": 4', '"n_layer": ' + "9" * 100000)
    (d / "config.json").write_text(text)
    VisualRWKV.from_pretrained(d)


@attack
def load_config_is_a_fifo(work):
    d = _copy(work, "fifo")
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")  # reading it would block forever
    VisualRWKV.from_pretrained(d)


@attack
def load_tokenizer_file_is_dev_zero(work):
    d = _copy(work, "devzero")
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").symlink_to("/dev/zero")
    VisualRWKV.from_pretrained(d)


@attack
def load_tokenizer_file_escapes(work):
    d = _copy(work, "tokesc")
    VisualRWKV.from_pretrained(_edit_config(d, lambda c: c["tokenizer"].update(file="../../../../etc/passwd")))


@attack
def load_tokenizer_class_outside_registry(work):
    d = _copy(work, "tokcls")
    VisualRWKV.from_pretrained(
        _edit_config(d, lambda c: c.update(tokenizer={"type": "class", "class": "os:system", "file": "tokenizer.json"}))
    )


@attack
def load_tokenizer_deep_json(work):
    d = _copy(work, "tokdeep")
    (d / "tokenizer.json").write_text('{"a":' * 200000 + "1" + "}" * 200000)
    VisualRWKV.from_pretrained(d)


@attack
def load_filename_escapes(work):
    VisualRWKV.from_pretrained(_copy(work, "fname"), "../fname/model.safetensors")


# --- saving -----------------------------------------------------------------------------------------------


@attack
def save_metadata_deeply_nested(work):
    deep: list = []
    for _ in range(100000):
        deep = [deep]
    VisualRWKV.from_pretrained(SHIPPED).save_pretrained(work / "s1", metadata={"x": deep})


@attack
def save_metadata_nan(work):
    VisualRWKV.from_pretrained(SHIPPED).save_pretrained(work / "s2", metadata={"x": float("nan")})


@attack
def save_over_a_file(work):
    (work / "s3").write_text("precious")
    try:
        VisualRWKV.from_pretrained(SHIPPED).save_pretrained(work / "s3")
    finally:
        assert (work / "s3").read_text() == "precious"


@attack
def save_into_a_symlink_to_elsewhere(work):
    (work / "elsewhere").mkdir()
    (work / "s4").symlink_to(work / "elsewhere")
    try:
        VisualRWKV.from_pretrained(SHIPPED).save_pretrained(work / "s4")
    finally:
        assert list((work / "elsewhere").iterdir()) == []


# --- state files ------------------------------------------------------------------------------------------


@attack
def state_absurd_layer_index(work):
    from rwkv_vision.state import LayerState

    sd = RWKVState([LayerState(torch.zeros(1, 8), torch.zeros(1, 2, 4, 4), torch.zeros(1, 8))]).state_dict()
    sd["blocks.999999999.wkv"] = torch.zeros(1, 2, 4, 4)
    save_file(sd, work / "st.safetensors")
    RWKVState.load(work / "st.safetensors")


@attack
def state_huge_shape_in_header(work):
    header = json.dumps({"blocks.0.wkv": {"dtype": "F32", "shape": [2**31, 2**31, 2**31], "data_offsets": [0, 0]}})
    (work / "st2.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    RWKVState.load(work / "st2.safetensors")


@attack
def state_round_trip(work):
    from rwkv_vision.state import LayerState

    s = RWKVState([LayerState(torch.ones(2, 8), torch.ones(2, 2, 4, 4), torch.ones(2, 8)) for _ in range(3)])
    s.save(work / "st3.safetensors")
    assert len(RWKVState.load(work / "st3.safetensors")) == 3


# --- preprocessing ----------------------------------------------------------------------------------------


@attack
def image_1x5000_png(work):
    data = _png(1, 5000)
    assert len(data) < 200
    (work / "thin.png").write_bytes(data)
    ImagePreprocessor(336)(open_image(work / "thin.png"))


@attack
def image_1x5000_in_memory(work):
    ImagePreprocessor(336)(Image.new("RGB", (1, 5000)))


@attack
def image_decompression_bomb_png(work):
    (work / "bomb.png").write_bytes(_png(100000, 100000))
    open_image(work / "bomb.png")


@attack
def image_bomb_just_over_the_limit(work):
    (work / "bomb2.png").write_bytes(_png(20000, 5000))
    open_image(work / "bomb2.png")


@attack
def image_truncated_png(work):
    (work / "trunc.png").write_bytes(_png(64, 64)[:40])
    open_image(work / "trunc.png")


@attack
def image_not_an_image(work):
    (work / "x.png").write_bytes(b"GIF89a" + b"\xff" * 20)
    open_image(work / "x.png")


@attack
def image_wide_but_fine(work):
    out = ImagePreprocessor(48)(Image.new("RGB", (480, 48)))
    assert out.shape == (1, 3, 48, 48)


@attack
def preprocessor_nan_mean(work):
    ImagePreprocessor(48, mean=[float("nan"), 0, 0])


@attack
def preprocessor_string_mean(work):
    ImagePreprocessor(48, mean="123")


# --- RWKV-7 (x070) language-model files --------------------------------------------------------------------
#
# The tiny files are written once before the attacks run (``_prepare``): their setup is not the library's time.

PREPARED: dict = {}


def _prepare(work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rwkv_vision.checkpoint.families import visualrwkv7_from_official_state_dict

    from reference.visualrwkv7_ref import random_v700_checkpoint, random_x070_state_dict, tiny_family_checkpoint

    PREPARED["x070"] = random_x070_state_dict(n_layer=2)
    from rwkv_vision.vision import encoder_to_v7_state_dict, tiny_visualrwkv7_encoder

    towers = {
        k: torch.rand(v.shape) + 0.5
        for k, v in encoder_to_v7_state_dict(tiny_visualrwkv7_encoder(device="meta")).items()
    }
    PREPARED["v7.00"] = random_v700_checkpoint(tower_sd=towers, vision_width=144, n_layer=2, n_embd=32, head_size=8)
    PREPARED["hd"] = tiny_family_checkpoint("hd")
    PREPARED["uhd"] = tiny_family_checkpoint("uhd")
    model = visualrwkv7_from_official_state_dict(PREPARED["v7.00"])
    PREPARED["v7dir"] = model.save_pretrained(work / "v7dir")


def _x070(work: Path, name: str, edit, *, suffix: str = ".pth") -> None:
    from rwkv_vision.checkpoint.lm import load_language_model

    sd = dict(PREPARED["x070"])
    edit(sd)
    path = work / (name + suffix)
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    load_language_model(path)


@attack
def x070_expanded_tensor_claims_huge_vocab(work):
    # a stride-0 view: a 68 kB file whose emb and head claim 2**24 x 32 floats each (4 GB as float32)
    def edit(sd):
        sd["emb.weight"] = torch.zeros(1).expand(2**24, 32)
        sd["head.weight"] = torch.zeros(1).expand(2**24, 32)

    _x070(work, "expanded", edit)


@attack
def x070_layer_index_20000(work):
    _x070(work, "l20000", lambda sd: sd.update({"blocks.20000.att.r_k": torch.zeros(4, 8)}))


@attack
def x070_r_k_disagrees_with_n_embd(work):
    _x070(work, "rk", lambda sd: [sd.update({f"blocks.{i}.att.r_k": torch.ones(3, 8)}) for i in range(2)])


@attack
def x070_one_block_has_another_lora_width(work):
    _x070(
        work, "lora", lambda sd: sd.update({"blocks.1.att.w1": torch.ones(32, 9), "blocks.1.att.w2": torch.ones(9, 32)})
    )


@attack
def x070_lora_width_huge(work):
    def edit(sd):
        for i in range(2):
            sd[f"blocks.{i}.att.a1"] = torch.ones(32, 2**20 + 1)
            sd[f"blocks.{i}.att.a2"] = torch.ones(1, 32).expand(2**20 + 1, 32)

    _x070(work, "lorahuge", edit)


@attack
def x070_missing_and_extra_keys(work):
    def edit(sd):
        del sd["blocks.1.att.k_k"]
        sd["blocks.1.att.bonus"] = torch.zeros(4)

    _x070(work, "missing", edit, suffix=".safetensors")


@attack
def x070_variant_x070b_key(work):
    _x070(work, "x070b", lambda sd: sd.update({"blocks.0.att.qkv.weight": torch.zeros(96, 32)}))


@attack
def x070_integer_tensors(work):
    _x070(work, "int", lambda sd: sd.update({"emb.weight": torch.zeros(300, 32, dtype=torch.int64)}))


@attack
def x070_safetensors_header_claims_huge_vocab(work):
    header = json.dumps(
        {"emb.weight": {"dtype": "F32", "shape": [2**24, 65536], "data_offsets": [0, 2**40 * 4]}}
    ).encode()
    (work / "hugevocab.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    from rwkv_vision.checkpoint.lm import load_language_model

    load_language_model(work / "hugevocab.safetensors")


def _lm_dir(work: Path, name: str, fn) -> None:
    from rwkv_vision.checkpoint.lm import load_language_model, save_language_model
    from rwkv_vision.checkpoint.official import rwkv7_from_official_state_dict

    out = save_language_model(rwkv7_from_official_state_dict(PREPARED["x070"]), work / name)
    _edit_config(out, fn)
    load_language_model(out)


@attack
def x070_dir_n_layer_1e9(work):
    _lm_dir(work, "lmdepth", lambda c: c["rwkv"].update(n_layer=10**9))


@attack
def x070_dir_lora_rank_1e9(work):
    _lm_dir(work, "lmlora", lambda c: c["rwkv"].update(d_w=10**9))


@attack
def x070_dir_head_size_not_dividing(work):
    _lm_dir(work, "lmhead", lambda c: c["rwkv"].update(head_size=7))


@attack
def x070_dir_n_layer_disagrees_with_the_weights(work):
    _lm_dir(work, "lmcount", lambda c: c["rwkv"].update(n_layer=1000))


@attack
def x070_dir_unknown_field(work):
    _lm_dir(work, "lmfield", lambda c: c.update(kernel="os.system"))


@attack
def cli_info_on_an_expanded_x070_file(work):
    from rwkv_vision import cli

    sd = dict(PREPARED["x070"])
    sd["emb.weight"] = torch.zeros(1).expand(2**24, 32)
    torch.save(sd, work / "cli-expanded.pth")
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        code = cli.main(["info", str(work / "cli-expanded.pth")])
    finally:
        sys.stderr = old
    text = err.getvalue()
    assert code == 1 and text.count("\n") == 1 and text.startswith("rwkv-vision info: error: "), text
    raise RWKVVisionError(text.strip())


# --- VisualRWKV-7 / HD files and their config.json ---------------------------------------------------------


def _visual(work: Path, name: str, family: str, edit) -> None:
    sd = dict(PREPARED[family])
    edit(sd)
    torch.save(sd, work / (name + ".pth"))
    VisualRWKV.from_pretrained(work / (name + ".pth"))


@attack
def v700_tower_width_unknown(work):
    def edit(sd):
        for k in [k for k in sd if k.startswith("vit.dino_featurizer.")]:
            del sd[k]

    _visual(work, "nodino", "v7.00", edit)


@attack
def v700_tower_block_20000(work):
    _visual(
        work,
        "towerdeep",
        "v7.00",
        lambda sd: sd.update({"vit.sam_featurizer.blocks.20000.attn.qkv.weight": torch.zeros(1)}),
    )


@attack
def v700_tower_expanded_width(work):
    key = next(k for k in PREPARED["v7.00"] if k.startswith("vit.dino_featurizer.") and k.endswith("cls_token"))
    _visual(work, "towerwide", "v7.00", lambda sd: sd.update({key: torch.zeros(1).expand(1, 1, 2**30)}))


@attack
def v700_projector_mis_shaped(work):
    _visual(work, "proj", "v7.00", lambda sd: sd.update({"proj.gate.weight": torch.zeros(7, 7)}))


@attack
def hd_with_a_v7_lm_key(work):
    _visual(work, "hdmix", "hd", lambda sd: sd.update({"rwkv.blocks.0.att.r_k": torch.zeros(4, 8)}))


@attack
def uhd_towers_of_unregistered_widths(work):
    _visual(work, "uhdwide", "uhd", lambda sd: None)


@attack
def uhd_tower_key_of_block_20000(work):
    _visual(
        work,
        "uhddeep",
        "uhd",
        lambda sd: sd.update({"vit.dino_featurizer.blocks.20000.mlp.fc1.weight": torch.zeros(1)}),
    )


def _v7dir(work: Path, name: str, fn) -> Path:
    out = work / name
    shutil.copytree(PREPARED["v7dir"], out)
    return _edit_config(out, fn)


@attack
def v7dir_loads(work):
    VisualRWKV.from_pretrained(_v7dir(work, "v7ok", lambda c: None))


@attack
def v7dir_architecture_is_a_list(work):
    VisualRWKV.from_pretrained(_v7dir(work, "archlist", lambda c: c.update(architecture=["rwkv7"])))


@attack
def v7dir_architecture_unknown(work):
    VisualRWKV.from_pretrained(_v7dir(work, "arch9", lambda c: c.update(architecture="rwkv9")))


@attack
def v7dir_architecture_rwkv6_on_rwkv7_weights(work):
    VisualRWKV.from_pretrained(_v7dir(work, "arch6", lambda c: c.update(architecture="rwkv6")))


@attack
def v7dir_padding_is_a_list(work):
    VisualRWKV.from_pretrained(_v7dir(work, "padlist", lambda c: c.update(padding=[{"multiple": 16}])))


@attack
def v7dir_padding_multiple_huge(work):
    VisualRWKV.from_pretrained(_v7dir(work, "padhuge", lambda c: c.update(padding={"multiple": 10**9, "token": 1})))


@attack
def v7dir_padding_token_outside_vocab(work):
    VisualRWKV.from_pretrained(_v7dir(work, "padtok", lambda c: c.update(padding={"multiple": 16, "token": 10**6})))


def _tower(c: dict, i: int, **changes) -> None:
    c["encoder"]["towers"][i].update(changes)


@attack
def v7dir_tower_not_a_vit(work):
    VisualRWKV.from_pretrained(_v7dir(work, "resnet", lambda c: _tower(c, 0, timm_model="resnet50")))


@attack
def v7dir_tower_img_size_huge(work):
    fn = lambda c: c["encoder"]["towers"][1]["timm_kwargs"].update(img_size=[2**20, 2**20])  # noqa: E731
    VisualRWKV.from_pretrained(_v7dir(work, "towerimg", fn))


@attack
def v7dir_tower_depth_huge(work):
    fn = lambda c: c["encoder"]["towers"][0]["timm_kwargs"].update(depth=10**6)  # noqa: E731
    VisualRWKV.from_pretrained(_v7dir(work, "towerdepth", fn))


@attack
def v7dir_sam_window_and_neck_huge(work):
    fn = lambda c: c["encoder"]["towers"][2]["timm_kwargs"].update(window_size=10**6, neck_chans=10**8)  # noqa: E731
    VisualRWKV.from_pretrained(_v7dir(work, "samhuge", fn))


@attack
def v7dir_tower_unknown_kwarg(work):
    fn = lambda c: c["encoder"]["towers"][0]["timm_kwargs"].update(block_fn="os.system")  # noqa: E731
    VisualRWKV.from_pretrained(_v7dir(work, "towerkw", fn))


@attack
def v7dir_tower_unknown_field(work):
    VisualRWKV.from_pretrained(_v7dir(work, "towerfield", lambda c: _tower(c, 0, pretrained=True)))


@attack
def v7dir_10000_towers(work):
    fn = lambda c: c["encoder"].update(towers=c["encoder"]["towers"] * 3334)  # noqa: E731
    VisualRWKV.from_pretrained(_v7dir(work, "towers", fn))


@attack
def v7dir_pool_huge(work):
    VisualRWKV.from_pretrained(_v7dir(work, "pool", lambda c: c["encoder"].update(pool=[10**6, 10**6])))


@attack
def v7dir_preprocessor_sizes_huge(work):
    def fn(c):
        c["preprocessor"] = json.loads(json.dumps(c["preprocessor"]).replace("28", str(10**7)))

    VisualRWKV.from_pretrained(_v7dir(work, "pre7", fn))


# --- the command line -------------------------------------------------------------------------------------


@attack
def cli_info_hostile_directory(work):
    from rwkv_vision import cli

    d = _edit_config(_copy(work, "cli"), lambda c: c["rwkv"].update(n_layer=10**9))
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        code = cli.main(["info", str(d)])
    finally:
        sys.stderr = old
    text = err.getvalue()
    assert code == 1 and text.count("\n") == 1 and text.startswith("rwkv-vision info: error: "), text
    raise RWKVVisionError(text.strip())  # the expected, one-line error


def run(work: Path) -> None:
    import gc

    _prepare(work)  # the tiny RWKV-7 files the attacks damage, written before the limits
    # The limits: address space = what the interpreter uses now + HEADROOM; SECONDS per attack.
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, vm + HEADROOM))

    def on_alarm(*_):
        raise Timeout(f"more than {SECONDS} s")

    signal.signal(signal.SIGALRM, on_alarm)
    only = sys.argv[2:]
    for name, fn in ATTACKS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        signal.alarm(SECONDS)
        try:
            fn(work)
            outcome, kind, message = "ok", "", ""
        except Timeout as e:
            outcome, kind, message = "timeout", "Timeout", str(e)
        except MemoryError as e:
            outcome, kind, message = "memory", "MemoryError", str(e)[:300]
        except (ValueError, OSError) as e:
            outcome, kind, message = "error", type(e).__name__, str(e)
        except BaseException as e:  # noqa: BLE001 - any other exception is a finding
            outcome, kind, message = "crash", type(e).__name__, str(e)[:300]
        finally:
            signal.alarm(0)
        seconds = time.perf_counter() - start
        print(
            json.dumps(dict(name=name, outcome=outcome, kind=kind, message=message[:5000], seconds=seconds)), flush=True
        )
        gc.collect()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
