"""VisualRWKV with an RWKV-7 language model, loaded from a tiny random checkpoint in the official v7.00 layout,
against the float64 re-statement of the official v7.00 code (tests/reference/visualrwkv7_ref.py).

What is checked: the logits with images (padding on and off, float64 and float32), the official re-run-everything
greedy generation (stop token included, ctx_len truncation), the default cached-state generation against full
forwards (and how it differs from the official one), batches and sampling, and scan policies on RWKV-7.
"""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.checkpoint.families import detect_family, visualrwkv7_from_official_state_dict
from rwkv_vision.errors import StateDictError
from rwkv_vision.models.rwkv7 import RWKV7
from rwkv_vision.scan import BiDir, UniDir
from rwkv_vision.vision import encoder_to_v7_state_dict, tiny_visualrwkv7_encoder

from reference.visualrwkv7_ref import (
    IMAGE_TOKEN,
    official_embeddings,
    official_generate,
    official_lm_logits,
    official_logits,
    random_v700_checkpoint,
    relative_rms_error,
)

K = 16  # tokens per image of the tiny towers (4 x 4)
# "User: " alone, one image run, "\nWhat is it?\n\n" and "Assistant:" in a 300-id toy vocabulary (ids < 300; the
# sequence is 9 + 16 = 25 long, so the official forward pads 7).
PROMPT = [24, 59, 33] + [IMAGE_TOKEN] * K + [11, 42, 261, 100, 7, 59]


@pytest.fixture(scope="module")
def checkpoint():
    # The towers' keys and shapes from a meta-device encoder (building it on the CPU costs seconds of init);
    # random values, scaled as an initialised ViT's, none zero.
    g = torch.Generator().manual_seed(0)
    towers = {}
    for key, spec in encoder_to_v7_state_dict(tiny_visualrwkv7_encoder(device="meta")).items():
        fan_in = spec.shape[1:].numel() if spec.dim() > 1 else 1
        towers[key] = torch.randn(spec.shape, generator=g) * (fan_in**-0.5 if spec.dim() > 1 else 0.1)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".1.weight", ".3.weight", "gamma")):
            towers[key] = towers[key] + 1.0
    return random_v700_checkpoint(
        tower_sd=towers, vision_width=144, n_layer=3, n_embd=32, head_size=8, vocab_size=300, seed=1
    )


@pytest.fixture(scope="module")
def model(checkpoint):
    return visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def pixels(model):
    g = torch.Generator().manual_seed(3)
    sizes = model.encoder.image_sizes
    return {name: torch.randn(1, 3, *size, generator=g, dtype=torch.float64) for name, size in sizes.items()}


@pytest.fixture(scope="module")
def features(model, pixels):
    """The towers' concatenated patch features [1, 16, 144] (the towers are tested on their own)."""
    with torch.no_grad():
        return model.encoder(pixels)


def ids(prompt=PROMPT):
    return torch.tensor([prompt])


def test_loads_as_v700_with_sizes_from_shapes(checkpoint, model):
    assert detect_family(checkpoint).name == "v7.00"
    assert isinstance(model.rwkv, RWKV7) and model.rwkv.n_layer == 3 and model.rwkv.n_embd == 32
    assert model.encoder.names == ["dino", "siglip", "sam"] and model.encoder.width == 144
    assert model.pad_to_multiple == 16 and model.pad_token_id == 261
    assert isinstance(model.scan, UniDir) and model.image_run_id == IMAGE_TOKEN


def test_strict_loading_names_the_keys(checkpoint):
    broken = dict(checkpoint)
    del broken["rwkv.blocks.1.att.a1"]
    with pytest.raises(StateDictError, match="rwkv.blocks.1.att.a1|blocks.1.att.a1"):
        visualrwkv7_from_official_state_dict(broken)
    broken = dict(checkpoint)
    broken["vit.dino_featurizer.blocks.9.norm1.weight"] = torch.zeros(32)
    with pytest.raises(StateDictError, match="vit.dino_featurizer.blocks.9.norm1.weight"):
        visualrwkv7_from_official_state_dict(broken)


def test_logits_with_images_equal_the_official_forward(checkpoint, model, pixels, features):
    with torch.no_grad():
        got = model(ids(), pixels).logits[0]
    ref = official_logits(checkpoint, PROMPT, features)
    assert got.shape == ref.shape == (len(PROMPT), 300)
    assert relative_rms_error(got, ref) < 1e-10
    # The padding is no detail: without it the logits are far off.
    assert relative_rms_error(official_logits(checkpoint, PROMPT, features, pad=False), ref) > 1e-2


def test_float32_model_is_close(checkpoint, pixels, features):
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(ids(), {k: v.float() for k, v in pixels.items()}).logits[0]
    assert relative_rms_error(got, official_logits(checkpoint, PROMPT, features)) < 1e-4


def test_padding_is_an_option(checkpoint, pixels, features):
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, pad=False).eval()
    assert model.pad_to_multiple is None
    with torch.no_grad():
        got = model(ids(), pixels).logits[0]
    assert relative_rms_error(got, official_logits(checkpoint, PROMPT, features, pad=False)) < 1e-10
    # A sequence already a multiple of 16 long gets no pad either way.
    prompt = PROMPT[:-9] + PROMPT[-9:][:7] + [5] * 9  # 32 ids
    with torch.no_grad():
        a = model(ids(prompt), pixels).logits[0]
    ref = official_logits(checkpoint, prompt, features)
    assert relative_rms_error(a, ref) < 1e-10


def test_official_rerun_generation_equals_the_official_generate(checkpoint, model, pixels, features):
    want = official_generate(checkpoint, PROMPT, features, max_new_tokens=8, ctx_len=2048)
    out = model.generate(ids(), pixels, official_rerun=True, ctx_len=2048, max_new_tokens=8, stop_tokens=(261,))
    assert out.tokens == [want]
    # ctx_len shorter than the prompt: the official code keeps the last ctx_len embeddings, image rows included.
    want = official_generate(checkpoint, PROMPT, features, max_new_tokens=6, ctx_len=20)
    out = model.generate_official(ids(), pixels, ctx_len=20, max_new_tokens=6, stop_tokens=(261,))
    assert out.tokens == [want]


def test_official_rerun_includes_the_stop_token(checkpoint, model, pixels, features):
    free = official_generate(checkpoint, PROMPT, features, max_new_tokens=6, ctx_len=2048, stop_token=-1)
    stop = free[3]
    want = official_generate(checkpoint, PROMPT, features, max_new_tokens=6, ctx_len=2048, stop_token=stop)
    out = model.generate(ids(), pixels, official_rerun=True, max_new_tokens=6, stop_tokens=(stop,))
    assert out.tokens == [want] and out.tokens[0][-1] == stop and out.finish_reasons == ["stop"]


def test_official_rerun_refuses_what_the_official_code_cannot_do(model, pixels):
    with pytest.raises(ValueError, match="greedy only"):
        model.generate(ids(), pixels, official_rerun=True, do_sample=True, max_new_tokens=2)
    with pytest.raises(ValueError, match="one prompt"):
        model.generate_official(torch.cat([ids(), ids()]), {k: torch.cat([v, v]) for k, v in pixels.items()})
    with pytest.raises(ValueError, match="ctx_len applies to official_rerun"):
        model.generate(ids(), pixels, ctx_len=10, max_new_tokens=2)


def test_cached_generation_equals_full_forwards_with_the_prompt_padding(checkpoint, model, pixels, features):
    """official_padding=False prefills the padded prompt once and decodes from its state: token j's logits
    are those of one forward over prompt + generated tokens with the PROMPT's pad count (7), where the
    official generate re-pads each step ((-length) mod 16 pads)."""
    n = 6
    out = model.generate(ids(), pixels, max_new_tokens=n, stop_tokens=(), official_padding=False)
    x = official_embeddings(checkpoint, PROMPT, features)
    n_pad = model.pad_count(len(PROMPT))
    assert n_pad == 7
    emb = checkpoint["rwkv.emb.weight"].double()
    want = []
    for _ in range(n):
        token = int(official_lm_logits(checkpoint, x, pad=n_pad)[-1].argmax())
        want.append(token)
        x = torch.cat([x, emb[token].view(1, 1, -1)], dim=1)
    assert out.tokens == [want]
    # One continuation step, logits compared: prefill state + one token == one forward with the prompt's pads.
    with torch.no_grad():
        prefill = model(ids(), pixels)
        step = model(torch.tensor([[want[0]]]), state=prefill.state).logits[0, -1]
    x = torch.cat([official_embeddings(checkpoint, PROMPT, features), emb[want[0]].view(1, 1, -1)], dim=1)
    assert relative_rms_error(step, official_lm_logits(checkpoint, x, pad=n_pad)[-1]) < 1e-10
    # ... which is not the official re-padded forward (26 positions get 6 pads, not 7).
    assert relative_rms_error(step, official_lm_logits(checkpoint, x)[-1]) > 1e-3


@pytest.mark.parametrize("official_padding", [True, False])
def test_cached_generation_batches_and_samples(model, pixels, official_padding):
    other = [24, 59, 33] + [IMAGE_TOKEN] * K + [11, 5, 6, 59]
    g = torch.Generator().manual_seed(4)
    second = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in pixels.items()}
    both = {k: torch.cat([pixels[k], second[k]]) for k in pixels}
    kw = dict(max_new_tokens=5, official_padding=official_padding)
    batch = model.generate([PROMPT, other], both, stop_tokens=(), **kw)
    one = model.generate(ids(), pixels, stop_tokens=(), **kw)
    two = model.generate(ids(other), second, stop_tokens=(), **kw)
    assert batch.tokens == one.tokens + two.tokens
    a = model.generate(ids(), pixels, do_sample=True, generator=torch.Generator().manual_seed(1), **kw)
    b = model.generate(ids(), pixels, do_sample=True, generator=torch.Generator().manual_seed(1), **kw)
    assert a.tokens == b.tokens and len(a.tokens[0]) >= 1
    seen = []
    streamed = model.generate(ids(), pixels, streamer=lambda row, tok: seen.append(tok), stop_tokens=(), **kw)
    assert seen == streamed.tokens[0] == one.tokens[0]


def test_scan_policies_on_rwkv7(checkpoint, pixels, features):
    """Not in the official v7.00 code: BiDir reverses the image span in odd layers; block 0's value (v_first)
    moves with its token. Equal to the reference; a policy that moves nothing equals UniDir."""
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, scan=BiDir()).eval()
    with torch.no_grad():
        got = model(ids(), pixels).logits[0]
    ref = official_logits(checkpoint, PROMPT, features, scan="bidir", num_token_per_image=K)
    assert relative_rms_error(got, ref) < 1e-10
    assert relative_rms_error(got, official_logits(checkpoint, PROMPT, features)) > 1e-3
    # Cached decoding after a scanned prefill equals the scanned forward over the longer sequence.
    out = model.generate(ids(), pixels, max_new_tokens=1, stop_tokens=())
    with torch.no_grad():
        prefill = model(ids(), pixels)
        step = model(torch.tensor([[out.tokens[0][0]]]), state=prefill.state).logits[0, -1]
    emb = checkpoint["rwkv.emb.weight"].double()
    x = torch.cat([official_embeddings(checkpoint, PROMPT, features), emb[out.tokens[0][0]].view(1, 1, -1)], 1)
    ref = official_lm_logits(checkpoint, x, pad=model.pad_count(len(PROMPT)), scan="bidir", spans=[(3, K)])
    assert relative_rms_error(step, ref[-1]) < 1e-10


def test_labels_never_target_image_positions(model, pixels):
    labels = ids().clone()
    out = model(ids(), pixels, labels=labels)
    logits = out.logits[0, :-1]
    targets = labels[0, 1:].clone()
    targets[targets == IMAGE_TOKEN] = -100
    want = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    assert torch.allclose(out.loss.double(), want, rtol=1e-5)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_pth_safetensors_and_directory_round_trip(tmp_path, checkpoint, model, pixels):
    import json

    from rwkv_vision import VisualRWKV
    from rwkv_vision.checkpoint.families import check_family
    from rwkv_vision.checkpoint.pretrained import describe_checkpoint

    torch.save(checkpoint, tmp_path / "v7.pth")  # a released file is a pickled flat dict
    loaded = VisualRWKV.from_pretrained(tmp_path / "v7.pth", dtype=torch.float64)
    assert _same_weights(loaded, model) and loaded.pad_to_multiple == 16
    assert describe_checkpoint(tmp_path / "v7.pth")["family"] == "v7.00"
    # Back to the released layout, as one .safetensors file: the same keys and tensors.
    flat = model.official_state_dict()
    assert set(flat) == set(checkpoint) and check_family(flat, "v7.00").name == "v7.00"
    assert all(torch.equal(flat[k].double(), checkpoint[k].double()) for k in flat)
    model.save_pretrained(tmp_path / "v7.safetensors")
    again = VisualRWKV.from_pretrained(tmp_path / "v7.safetensors")
    assert _same_weights(again, model)
    # A save_pretrained directory: config.json (architecture rwkv7, padding, towers, projector, layout,
    # per-tower preprocessing) round-trips to the same model and the same logits.
    model.save_pretrained(tmp_path / "dir")
    back = VisualRWKV.from_pretrained(tmp_path / "dir")
    assert _same_weights(back, model) and back.rwkv.config == model.rwkv.config
    assert (back.pad_to_multiple, back.pad_token_id, back.layout, back.scan) == (16, 261, model.layout, model.scan)
    assert back.encoder.names == model.encoder.names and back.encoder.widths == model.encoder.widths
    saved = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert saved["architecture"] == "rwkv7" and saved["padding"] == {"multiple": 16, "token": 261}
    assert describe_checkpoint(tmp_path / "dir")["family"] == "v7.00"
    with torch.no_grad():
        assert torch.equal(back(ids(), pixels).logits, model(ids(), pixels).logits)
    assert back.image_preprocessor == model.image_preprocessor


def test_uhd_files_with_unknown_tower_sizes_are_refused_by_their_widths(tmp_path):
    """UHD files load (tests/checkpoint/test_uhd.py); towers of widths no registered encoder has cannot be
    sized from shapes alone, and the error says so."""
    from rwkv_vision import VisualRWKV

    from reference.visualrwkv7_ref import tiny_family_checkpoint

    torch.save(tiny_family_checkpoint("uhd"), tmp_path / "uhd.pth")
    with pytest.raises(StateDictError, match="match no known encoder"):
        VisualRWKV.from_pretrained(tmp_path / "uhd.pth")


@pytest.fixture(scope="module")
def world_checkpoint(checkpoint):
    """The same towers and projector with a language model of the World vocabulary (65536 ids)."""
    from reference.visualrwkv7_ref import random_x070_state_dict

    lm = random_x070_state_dict(n_layer=2, n_embd=32, head_size=8, vocab_size=65536, seed=5)
    return {k: v for k, v in checkpoint.items() if not k.startswith("rwkv.")} | {"rwkv." + k: v for k, v in lm.items()}


def _picture():
    from PIL import Image

    return Image.fromarray((torch.rand(40, 52, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy())


def test_processor_and_chat_build_the_official_prompt(world_checkpoint):
    """With the World vocabulary: the processor's ids are the official evaluate.py ids (images first, "User: "
    tokenised alone, a run of 65535 per image), its pixel_values one tensor per tower; chat(official_rerun=True)
    answers what the official generate answers, decoded and cut at the first blank line as evaluate.py does."""
    from rwkv_vision.chat import chat
    from rwkv_vision.tokenizers import WorldTokenizer

    from reference.visualrwkv7_ref import official_prompt_ids

    sd = world_checkpoint
    model = visualrwkv7_from_official_state_dict(sd, tokenizer=WorldTokenizer()).eval()
    tok = model.get_tokenizer()
    image = _picture()
    question = "What is in the picture?"
    inputs = model.processor(image, question)
    want_ids = official_prompt_ids(tok, question, 1, K)
    assert inputs.input_ids.tolist() == [want_ids]
    assert want_ids[:3] == tok.encode("User: ") == [24281, 59, 33] and want_ids[-3:] == [5585, 41693, 59]
    assert set(inputs.pixel_values) == {"dino", "siglip", "sam"}
    assert inputs.pixel_values["sam"].shape == (1, 3, 128, 128)
    with torch.no_grad():
        feats = model.encoder(inputs.pixel_values)
    tokens = official_generate(sd, want_ids, feats.double(), max_new_tokens=6, ctx_len=2048)
    want = tok.decode(tokens).split("\n\n")[0].strip()
    assert chat(model, model.processor, image, question, max_new_tokens=6, official_rerun=True) == want
    assert model.chat(image, question, max_new_tokens=6, official_rerun=True) == want
    # The default (cached) chat answers from the prompt's state: the same prompt, the documented decoding.
    out = model.generate(inputs.input_ids, inputs.pixel_values, max_new_tokens=6)
    assert model.chat(image, question, max_new_tokens=6) == tok.decode(out.tokens[0]).split("\n\n")[0].strip()


def test_cli_info_names_the_family(tmp_path, checkpoint, capsys):
    import json

    from rwkv_vision.cli import main

    from reference.visualrwkv7_ref import tiny_family_checkpoint

    torch.save(checkpoint, tmp_path / "v7.pth")
    torch.save(tiny_family_checkpoint("uhd"), tmp_path / "uhd.pth")
    assert main(["info", str(tmp_path / "v7.pth")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "v7.00" and info["architecture"] == "rwkv7" and info["padding"]["multiple"] == 16
    assert main(["info", str(tmp_path / "uhd.pth")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "uhd" and info["files"] == "VisualRWKV-v0613-*"


def test_cli_chat_with_a_v7_file(tmp_path, world_checkpoint, capsys):
    from rwkv_vision import VisualRWKV
    from rwkv_vision.cli import main

    torch.save(world_checkpoint, tmp_path / "v7.pth")
    _picture().save(tmp_path / "image.png")
    model = VisualRWKV.from_pretrained(tmp_path / "v7.pth")
    want = model.chat(_picture(), "What is it?", max_new_tokens=5)
    args = [str(tmp_path / "image.png"), "What is it?", "--model", str(tmp_path / "v7.pth"), "--max-new-tokens", "5"]
    assert main(["chat", *args, "--no-stream"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["chat", *args]) == 0
    assert capsys.readouterr().out == want + "\n"
    # convert: the released .pth to a save_pretrained directory, which answers the same
    assert main(["convert", str(tmp_path / "v7.pth"), str(tmp_path / "converted")]) == 0
    capsys.readouterr()
    converted = VisualRWKV.from_pretrained(tmp_path / "converted")
    assert converted.chat(_picture(), "What is it?", max_new_tokens=5) == want


def test_hd_file_loads_and_matches_the_official_hd_forward(tmp_path, checkpoint):
    """VisualRWKV-HD (v0612): an RWKV-6 language model with the same towers, proj -> gate -> o_proj, BiDir,
    one placeholder per image, no padding. Logits and the official re-run generate against the reference."""
    from rwkv_vision import VisualRWKV
    from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX
    from rwkv_vision.models.rwkv6 import RWKV6

    from reference.rwkv6_ref import random_official_state_dict
    from reference.visualrwkv7_ref import hd_embeddings, hd_generate, hd_lm_logits

    lm = random_official_state_dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, vocab_size=300, seed=2)
    g = torch.Generator().manual_seed(6)
    sd = {k: v for k, v in checkpoint.items() if k.startswith("vit.")} | {"rwkv." + k: v for k, v in lm.items()}
    sd["proj.proj.weight"] = torch.randn(32, 144, generator=g) / 12
    sd["proj.gate.weight"] = torch.randn(32, 32, generator=g) / 32**0.5
    sd["proj.o_proj.weight"] = torch.randn(32, 32, generator=g) / 32**0.5
    assert detect_family(sd).name == "hd"
    torch.save(sd, tmp_path / "hd.pth")
    model = VisualRWKV.from_pretrained(tmp_path / "hd.pth", dtype=torch.float64)
    assert isinstance(model.rwkv, RWKV6) and isinstance(model.scan, BiDir) and model.pad_to_multiple is None
    prompt = [24, 59, 33, IMAGE_TOKEN_INDEX, 11, 42, 261, 100, 7, 59]
    g = torch.Generator().manual_seed(7)
    pixels = {
        n: torch.randn(1, 3, *size, generator=g, dtype=torch.float64) for n, size in model.encoder.image_sizes.items()
    }
    with torch.no_grad():
        feats = model.encoder(pixels)
        got = model(torch.tensor([prompt]), pixels).logits[0]
    x, span = hd_embeddings(sd, prompt, feats)
    assert span == (3, K)
    assert relative_rms_error(got, hd_lm_logits(sd, x, span)) < 1e-6  # RWKV-6 decays run in float32, as official
    out = model.generate(torch.tensor([prompt]), pixels, official_rerun=True, max_new_tokens=5, stop_tokens=(261,))
    assert out.tokens == [hd_generate(sd, prompt, feats, max_new_tokens=5)]
    # Back to the released layout, and through a save_pretrained directory.
    flat = model.official_state_dict()
    assert set(flat) == set(sd) and all(torch.equal(flat[k], sd[k].double()) for k in sd)
    model.save_pretrained(tmp_path / "hd")
    back = VisualRWKV.from_pretrained(tmp_path / "hd")
    assert isinstance(back.scan, BiDir) and back.pad_to_multiple is None
    with torch.no_grad():
        assert torch.equal(back(torch.tensor([prompt]), pixels).logits, model(torch.tensor([prompt]), pixels).logits)


def test_pooled_tokens_per_image_as_the_official_adaptive_pool(checkpoint, pixels, features):
    """``num_token_per_image`` (evaluate.py's option, default 16 there, 1024 in the released scripts): the
    concatenated features are average-pooled on the grid before the projector, as nn.AdaptiveAvgPool2d."""
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, num_token_per_image=4).eval()
    assert model.image_tokens == 4
    prompt = PROMPT[:3] + [IMAGE_TOKEN] * 4 + PROMPT[3 + K :]
    with torch.no_grad():
        got = model(ids(prompt), pixels).logits[0]
    ref = official_logits(checkpoint, prompt, features, num_token_per_image=4)
    assert relative_rms_error(got, ref) < 1e-10
    with pytest.raises(ValueError, match="square number"):
        visualrwkv7_from_official_state_dict(checkpoint, num_token_per_image=5)


@pytest.mark.filterwarnings("ignore:scan policy MultiDir")  # 4 orders on 3 layers: the point is the decode
@pytest.mark.parametrize("scan", ["bidir", "multidir", "snake", "zigzag"])
def test_every_scan_policy_decodes_from_its_prefill(checkpoint, pixels, scan):
    """Cached decoding after a scanned prefill equals one scanned forward over the longer sequence (no
    padding, so both read the same positions)."""
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, scan=scan, pad=False).eval()
    with torch.no_grad():
        prefill = model(ids(), pixels)
        step = model(torch.tensor([[5]]), state=prefill.state).logits[0, -1]
        full = model(ids(PROMPT + [5]), pixels).logits[0, -1]
        plain = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, pad=False).eval()
        uni = plain(ids(PROMPT + [5]), pixels).logits[0, -1]
    assert relative_rms_error(step, full) < 1e-10
    assert relative_rms_error(full, uni) > 1e-4  # the policy changes the model's reading


def test_official_padding_decodes_from_states_with_the_official_tokens(checkpoint, model, pixels, features):
    """generate(official_padding=True): m = 16 cached states per row (one per pad count), so every step has
    the logits of the official re-padded forward at O(1) cost in the length: the official tokens, here over
    10 steps (the pad count changes every step), for a batch of two prompts of different lengths."""
    other = [24, 59, 33] + [IMAGE_TOKEN] * K + [11, 5, 6, 7, 8, 9, 59]
    g = torch.Generator().manual_seed(4)
    second = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in pixels.items()}
    with torch.no_grad():
        feats2 = model.encoder(second)
    want = [
        official_generate(checkpoint, PROMPT, features, max_new_tokens=10, ctx_len=2048, stop_token=-1),
        official_generate(checkpoint, other, feats2, max_new_tokens=10, ctx_len=2048, stop_token=-1),
    ]
    both = {k: torch.cat([pixels[k], second[k]]) for k in pixels}
    out = model.generate([PROMPT, other], both, official_padding=True, max_new_tokens=10, stop_tokens=())
    assert out.tokens == want
    # the default for a padded (v7.00) model
    assert model.generate(ids(), pixels, max_new_tokens=10, stop_tokens=()).tokens == [want[0]]
    cached = model.generate(ids(), pixels, max_new_tokens=10, stop_tokens=(), official_padding=False)
    assert cached.tokens[0][0] == want[0][0]


def test_official_rerun_stops_at_261_only_by_default(checkpoint, pixels):
    """The official generate's only stop is STOP_TOKEN_INDEX (261); 0 is an ordinary token there, while the
    World tokenizer's stop tokens (the cached default) are 261 and 0. A head that always picks 0 shows it."""
    from rwkv_vision.tokenizers import WorldTokenizer

    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64, tokenizer=WorldTokenizer())
    with torch.no_grad():
        model.rwkv.ln_out.weight.zero_()
        model.rwkv.ln_out.bias.zero_()
        model.rwkv.ln_out.bias[0] = 1.0
        model.rwkv.head.weight[0, 0] = 100.0  # logit 100 for id 0 whatever the input
    official = model.generate(ids(), pixels, official_rerun=True, max_new_tokens=3)
    assert official.tokens == [[0, 0, 0]] and official.finish_reasons == ["length"]
    served = model.generate(ids(), pixels, max_new_tokens=3)
    assert served.tokens == [[0]] and served.finish_reasons == ["stop"]


def test_shorter_image_runs_pool_the_features(checkpoint, model, pixels, features):
    """Ids made with fewer tokens per image than the encoder gives (evaluate.py's num_token_per_image default
    is 16, the released scripts' 1024) pool the features to that grid, as the official model built with
    that option does; the model need not be loaded with num_token_per_image."""
    prompt = PROMPT[:3] + [IMAGE_TOKEN] * 4 + PROMPT[3 + K :]
    with torch.no_grad():
        got = model(ids(prompt), pixels).logits[0]
    ref = official_logits(checkpoint, prompt, features, num_token_per_image=4)
    assert relative_rms_error(got, ref) < 1e-10
    with pytest.raises(ValueError, match="not a multiple of 16 tokens per image"):
        model(ids(PROMPT[:3] + [IMAGE_TOKEN] * 5 + PROMPT[3 + K :]), pixels)
    # generation reads the same: the official tokens, one image per run
    assert model.count_images(ids(prompt)) == 1 and model.count_images(ids()) == 1
    want = official_generate(checkpoint, prompt, features, max_new_tokens=4, ctx_len=2048, num_token_per_image=4)
    assert model.generate(ids(prompt), pixels, max_new_tokens=4, stop_tokens=(261,)).tokens == [want]
