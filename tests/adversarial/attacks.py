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
    sd = load_file(d / "model.safetensors")
    sd.update({f"junk.{i}": torch.zeros(1) for i in range(50000)})
    save_file(sd, d / "model.safetensors")
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
