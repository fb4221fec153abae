"""Official RWKV-7 (x070) files: loading .pth (weights only) and .safetensors, save/convert round trips,
``rwkv-vision info/convert/chat`` on a text model, and clear refusals."""

import json

import pytest
import torch

from rwkv_vision import RWKV7
from rwkv_vision.checkpoint.lm import describe_language_model, load_language_model, save_language_model
from rwkv_vision.cli import main
from rwkv_vision.errors import CheckpointError, StateDictError

from reference.rwkv7_ref import random_official_x070_state_dict, relative_rms_error, rwkv7_reference_logits


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    sd = random_official_x070_state_dict(n_layer=2, n_embd=32, head_size=8, vocab_size=65536, seed=4)
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}  # as released
    path = tmp_path_factory.mktemp("x070") / "rwkv7-test.pth"
    torch.save(sd, path)
    return path, sd


def test_from_pretrained_reads_an_official_pth(pth):
    path, sd = pth
    model = RWKV7.from_pretrained(path, dtype=torch.float32)
    assert not model.training and model.emb.weight.dtype == torch.float32
    assert model.tokenizer is not None  # the World tokenizer for a 65536-token vocabulary
    ids = torch.tensor([[1, 65535, 300, 7]])
    assert relative_rms_error(model(ids).logits, rwkv7_reference_logits(sd, ids)) < 1e-5
    assert RWKV7.from_pretrained(path).emb.weight.dtype == torch.bfloat16  # the file's dtype by default


def test_save_and_convert_round_trips(pth, tmp_path):
    path, _ = pth
    model = RWKV7.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7]])
    for target in (tmp_path / "dir", tmp_path / "one.safetensors"):
        model.save_pretrained(target)
        again = RWKV7.from_pretrained(target)
        assert torch.equal(again(ids).logits, model(ids).logits)
    config = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert config["architecture"] == "rwkv7" and config["rwkv"]["d_g"] == 7 and config["tokenizer"] == {"type": "world"}
    assert main(["convert", str(path), str(tmp_path / "conv"), "--dtype", "float32"]) == 0
    assert load_language_model(tmp_path / "conv").emb.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="pickle"):
        save_language_model(model, tmp_path / "x.pth")


def test_info_says_x070_and_its_sizes(pth, capsys):
    path, _ = pth
    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "rwkv7" and info["official_format"] == "x070"
    assert (info["n_layer"], info["n_embd"], info["head_size"], info["n_head"]) == (2, 32, 8, 4)
    assert (info["d_w"], info["d_a"], info["d_v"], info["d_g"], info["vocab_size"]) == (6, 5, 4, 7, 65536)
    assert info["dtypes"] == ["bfloat16"]
    assert describe_language_model(path)["parameters"] == info["parameters"]


def test_chat_with_a_text_model(pth, capsys):
    path, _ = pth
    assert main(["chat", "Hello?", "--model", str(path), "--max-new-tokens", "3", "--no-stream"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main(["chat", "img.png", "Hello?", "--model", str(path)]) == 1
    assert "text-only" in capsys.readouterr().err


def test_bad_files_are_refused_clearly(tmp_path, pth):
    _, sd = pth
    variant = dict(sd)
    variant["blocks.0.ffn.s_emb.weight"] = torch.zeros(4, 2)
    torch.save(variant, tmp_path / "v7a.pth")
    with pytest.raises(StateDictError, match="x070a"):
        load_language_model(tmp_path / "v7a.pth")
    missing = {k: v for k, v in sd.items() if k != "blocks.1.att.w2"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(StateDictError, match="blocks.1.att.w2"):
        load_language_model(tmp_path / "missing.pth")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"format": "rwkv_vision.LanguageModel"}))
    with pytest.raises(CheckpointError, match="architecture"):
        load_language_model(tmp_path / "d")
    torch.save({"emb.weight": torch.zeros(3, 4), "blocks.0.ln1.weight": torch.zeros(4)}, tmp_path / "odd.pth")
    with pytest.raises(StateDictError, match="not an RWKV language model"):
        load_language_model(tmp_path / "odd.pth")
