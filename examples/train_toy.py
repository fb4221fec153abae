"""Train a small VisualRWKV from scratch on ShapesVQA, on one CPU, one GPU or several processes.

    python examples/train_toy.py --out runs/toy                                   # one process (CPU or GPU)
    torchrun --standalone --nproc_per_node 2 examples/train_toy.py --out runs/toy   # DDP (gloo / nccl)
    python examples/train_toy.py --steps 300 --scan multidir --layout first --decay static   # a variant

The model is built only from the library's public pieces: a CLIP-shaped timm ViT trained from scratch
(``timm_vit``), a ``LinearProjector``, an ``RWKV6`` of a few layers and the ``WordTokenizer``, joined by
``VisualRWKV`` with a scan policy and a prompt layout. One training example is::

    prompt  = layout.tokenize([("user", question)], tokenizer, num_images=1)   # ends with "Assistant:"
    answer  = tokenizer.encode(" " + answer) + ["\\n\\n"]                       # the stop token is learnt too
    ids     = prompt + answer[:-1]          # one IMAGE_TOKEN_INDEX, replaced by the image's k embeddings
    logits  = model(ids, pixel_values)[0]   # [b, T, v], T = t + k - 1
    loss    = cross_entropy(logits, labels) # labels are -100 except where the next token is an answer token

Rows are right-padded (with id 0 and label -100): a recurrent model reads left to right, so padding after
the answer cannot change any logit that is scored.

Distributed: ``torchrun`` sets RANK / WORLD_SIZE; the model is wrapped in PyTorch's own
DistributedDataParallel (backend gloo on CPU, nccl on CUDA), each rank reads its own stride of the data
(``DistributedSampler``), ``--batch-size`` is the global batch, and only rank 0 prints and saves. Held-out
evaluation is sharded across ranks and the counts are summed.

Deterministic: the seed fixes the initial weights, the data stream (ShapesVQA items are a pure function of
``(seed, split, index)``) and its order; the same command on the same machine gives the same weights.

The functions here (``ToyConfig``, ``build_model``, ``ToyCollator``, ``evaluate``, ``train``) are reused by
``evaluate_toy.py``, ``ablations.py`` and the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rwkv_vision import RWKV6, VisualRWKV
from rwkv_vision.data import QUESTION_TYPES, ShapesVQA, WordTokenizer, exact_match
from rwkv_vision.vision import ImagePreprocessor, LinearProjector, timm_vit

IGNORE = -100  # cross_entropy's ignore_index: prompt and padding positions


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ToyConfig:
    """Sizes of the toy model and of its data.

    The ViT's patch equals one grid cell by default (``image_size // grid``), so each patch token holds
    exactly one shape (or background): ``grid**2`` patch tokens + CLS per image. The ViT is CLIP-shaped
    (pre-norm, quick-GELU, 64 channels per head, CLS last, last block's hidden states) and the projector is
    v6.0's bias-free linear one, so the checkpoint also has the released VisualRWKV layout.
    """

    image_size: int = 48
    grid: int = 3
    patch_size: int | None = None
    vit_width: int = 128
    vit_depth: int = 2
    vit_mlp_ratio: float = 4.0
    pos_embed_std: float = 0.5
    n_layer: int = 4
    n_embd: int = 128
    head_size: int = 32
    d_mix: int = 16
    d_decay: int = 32
    dim_ffn: int | None = None
    data_dependent_lerp: bool = True
    data_dependent_decay: bool = True
    min_objects: int = 1
    max_objects: int | None = None
    question_types: tuple[str, ...] = QUESTION_TYPES
    instruction: bool = False  # append VisualRWKV's short-answer instruction to each question

    def __post_init__(self) -> None:
        if self.patch_size is None:
            self.patch_size = self.image_size // self.grid
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        if self.vit_width % 64:
            raise ValueError(f"vit_width must be a multiple of 64 (CLIP's head size), got {self.vit_width}")
        self.question_types = tuple(self.question_types)

    def dataset(self, split: str, *, size: int, seed: int) -> ShapesVQA:
        return ShapesVQA(
            split,
            size=size,
            seed=seed,
            image_size=self.image_size,
            grid=self.grid,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            question_types=self.question_types,
        )


def build_model(
    config: ToyConfig,
    *,
    tokenizer: WordTokenizer | None = None,
    scan: str = "bidir",
    layout: str = "sandwich",
    device=None,
) -> VisualRWKV:
    """A freshly initialised toy VisualRWKV (draws from torch's global RNG: seed it first)."""
    tokenizer = tokenizer or WordTokenizer()
    encoder = timm_vit(
        "vit_base_patch16_clip_224",
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.vit_width,
        depth=config.vit_depth,
        num_heads=config.vit_width // 64,
        mlp_ratio=config.vit_mlp_ratio,
        pre_norm=True,
        final_norm=False,
        act_layer="quick_gelu",
        cls="last",
        layer=-1,
        device=device,
    )
    rwkv = RWKV6(
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        head_size=config.head_size,
        dim_ffn=config.dim_ffn,
        d_mix=config.d_mix,
        d_decay=config.d_decay,
        vocab_size=tokenizer.vocab_size,
        data_dependent_lerp=config.data_dependent_lerp,
        data_dependent_decay=config.data_dependent_decay,
        device=device,
    )
    with torch.no_grad():
        # timm starts position embeddings near zero (std 0.02, |pos| ~ 0.2 against |patch| ~ 8). A recurrent
        # LM has no other way to tell which image token is which cell than its content, so questions about
        # one cell ("the top left") only become learnable once the position grows; starting it at the
        # patch embeddings' scale makes every patch token say where it is from the first step.
        encoder.vit.pos_embed.normal_(0.0, config.pos_embed_std)
    proj = LinearProjector(encoder.width, rwkv.n_embd, device=device)
    return VisualRWKV(
        rwkv=rwkv,
        encoder=encoder,
        proj=proj,
        scan=scan,
        layout=layout,
        tokenizer=tokenizer,
        preprocessor=ImagePreprocessor(config.image_size),
        freeze_encoder=False,
    )


# --------------------------------------------------------------------------------------------------
# Samples -> tensors
# --------------------------------------------------------------------------------------------------


class ToyCollator:
    """Turns ShapesVQA samples into a padded training batch (or prompts for generation).

    ``__call__(samples)`` returns a dict:
        input_ids [b, t] int64: prompt + answer without its stop token, one IMAGE_TOKEN_INDEX per row,
            right-padded with 0;
        pixel_values [b, 3, H, W] float32;
        labels [b, T] int64 over the *expanded* sequence (T = t + k - 1): the answer tokens and the stop
            token at the positions that predict them, IGNORE elsewhere;
        question_types: list of b strings.
    """

    def __init__(self, model: VisualRWKV, *, instruction: bool = False):
        self.tokenizer = model.get_tokenizer()
        self.layout = model.layout
        self.preprocessor = model.get_preprocessor()
        self.image_tokens = model.image_tokens
        self.instruction = instruction
        self.stop = self.tokenizer.stop_token_ids[0]  # "\n\n": the turn separator ends an answer

    def prompt_ids(self, question: str) -> list[int]:
        """The generation prompt of one question (ends with "Assistant:"), one IMAGE_TOKEN_INDEX inside."""
        return self.layout.tokenize([("user", question)], self.tokenizer, num_images=1).input_ids

    def question_text(self, sample) -> str:
        return sample.messages(instruction=self.instruction)[0][1]

    def answer_ids(self, answer: str) -> list[int]:
        """The assistant turn after "Assistant:" — " answer" then "\\n\\n" — as the full turn tokenises."""
        return self.tokenizer.encode(" " + answer) + [self.stop]

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        rows, targets = [], []
        for s in samples:
            p, a = self.prompt_ids(self.question_text(s)), self.answer_ids(s.answer)
            rows.append(p + a[:-1])
            # Expanded position of the last prompt token: it predicts a[0]; a[j-1] predicts a[j].
            first = len(p) - 1 + self.image_tokens - 1
            targets.append((first, a))
        t = max(len(r) for r in rows)
        T = t + self.image_tokens - 1
        input_ids = torch.zeros(len(rows), t, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for i, (r, (first, a)) in enumerate(zip(rows, targets)):
            input_ids[i, : len(r)] = torch.tensor(r)
            labels[i, first : first + len(a)] = torch.tensor(a)
        pixel_values = self.preprocessor([s.image for s in samples])
        return dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            labels=labels,
            question_types=[s.question_type for s in samples],
        )


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over answer positions, and the count of positions whose argmax is right.

    logits [b, T, v], labels [b, T] (IGNORE where not scored) -> (loss [], correct [] int64).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits [b, T, v] {tuple(logits.shape)} and labels [b, T] {tuple(labels.shape)} disagree")
    flat, target = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    loss = F.cross_entropy(flat, target, ignore_index=IGNORE)
    scored = target != IGNORE
    correct = (flat.argmax(-1)[scored] == target[scored]).sum()
    return loss, correct


# --------------------------------------------------------------------------------------------------
# Held-out evaluation by generation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: VisualRWKV,
    samples: Sequence[Any],
    *,
    batch_size: int = 64,
    instruction: bool = False,
    max_new_tokens: int = 4,
    device=None,
) -> dict[str, Any]:
    """Greedy generation from the cached state, scored by ``exact_match`` against the true answer.

    Prompts of equal length are batched together (a recurrent model has no attention mask, so rows of
    one batch must have the same length; bucketing keeps the result exactly that of one-by-one
    generation). Returns ``{"correct", "total", "accuracy", "per_type": {type: [correct, total]},
    "predictions": [(index, prediction, answer, question_type)]}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = device or model.rwkv.emb.weight.device
    collator = ToyCollator(model, instruction=instruction)
    tok = collator.tokenizer
    buckets: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for i, s in enumerate(samples):
        ids = collator.prompt_ids(collator.question_text(s))
        buckets[len(ids)].append((i, ids))
    predictions: list[tuple[int, str, str, str]] = []
    for _, items in sorted(buckets.items()):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            ids = torch.tensor([p for _, p in chunk], dtype=torch.long, device=device)
            pixels = collator.preprocessor([samples[i].image for i, _ in chunk], device=device)
            out = model.generate(ids, pixels, max_new_tokens=max_new_tokens, stop_tokens=tok.stop_token_ids)
            for (i, _), tokens in zip(chunk, out.tokens):
                text = tok.decode(tokens).split("\n\n")[0].strip()
                predictions.append((i, text, samples[i].answer, samples[i].question_type))
    predictions.sort()
    per_type: dict[str, list[int]] = {}
    for _, pred, answer, qtype in predictions:
        counts = per_type.setdefault(qtype, [0, 0])
        counts[0] += exact_match(pred, answer)
        counts[1] += 1
    correct = sum(c for c, _ in per_type.values())
    model.train(was_training)
    return dict(
        correct=correct,
        total=len(predictions),
        accuracy=correct / max(len(predictions), 1),
        per_type=dict(sorted(per_type.items())),
        predictions=predictions,
    )


def format_accuracy(result: dict[str, Any]) -> str:
    lines = [f"overall  {100 * result['accuracy']:6.2f}%  ({result['correct']}/{result['total']})"]
    for qtype, (c, n) in result["per_type"].items():
        lines.append(f"  {qtype:<12} {100 * c / max(n, 1):6.2f}%  ({c}/{n})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_model(model: VisualRWKV, out: Path, *, dtype: torch.dtype | None = None, metadata: dict | None = None) -> None:
    """``model.save_pretrained(out)``: config.json (with ``metadata``) + model.safetensors + tokenizer.json."""
    model.save_pretrained(out, dtype=dtype, metadata=metadata)


def flat_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: some parameters are views of one tensor, which safetensors refuses to store as such
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def setup_distributed(device_arg: str, threads: int | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) this joins the process group:
    nccl when the device is CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg not in ("cpu", "cuda") and not device_arg.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device_arg!r}")
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        device = torch.device("cuda", local_rank) if device_arg == "cuda" else torch.device(device_arg)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # Processes on one machine share its cores; oversubscribing them makes every step slower.
        # One thread per process by default: at this size intra-op parallelism gains little, and on shared
        # cores its spinning threads make every step several times slower.
        torch.set_num_threads(threads or 1)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def lr_at(step: int, *, steps: int, lr: float, warmup: int, final_fraction: float = 0.05) -> float:
    """Linear warm-up, then a cosine from ``lr`` down to ``final_fraction * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def fix_vit_attention(model: VisualRWKV) -> None:
    """Keep each ViT block's query/key projections and the LayerNorm before the attention at their random
    initialisation (no gradient reaches them); values, outputs, MLPs and embeddings still train.

    Why: trained from scratch at a useful learning rate, this small ViT's attention logits grow until
    every patch attends to the same token (the attention entropy falls from log(k) to ~0.5 within a few
    hundred steps); the image features then become the same for every image and the model is left with
    answer priors (loss stuck at ~0.73). Fixed random queries and keys keep the attention a near-uniform
    mixing, which costs nothing here: each patch is one grid cell, so per-patch features carry the
    perception, and the RWKV-6 layers relate the cells.
    """
    for block in model.encoder.vit.blocks:
        qkv = block.attn.qkv
        width = qkv.weight.shape[1]

        def zero_qk(grad: torch.Tensor, width: int = width) -> torch.Tensor:
            grad = grad.clone()
            grad[: 2 * width] = 0  # rows [q; k; v]: only v learns
            return grad

        qkv.weight.register_hook(zero_qk)
        if qkv.bias is not None:
            qkv.bias.register_hook(zero_qk)
        block.norm1.requires_grad_(False)


def make_optimizer(
    model: torch.nn.Module, *, lr: float, weight_decay: float, encoder_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW over four groups: (vision side | language model) x (decayed | not). Each group carries
    ``lr_scale``; the training loop sets ``lr = lr_scale * schedule(step)``."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Decay only matrices: decaying gains, biases, mixing coefficients and decay rates pulls them toward
        # values (0) that mean something specific in RWKV, not toward "simpler".
        decay = p.dim() >= 2 and "time_" not in name and "pos_embed" not in name
        # The ViT's position embedding is not image-dependent (it cannot collapse the features to one image),
        # and it is what tells cells apart: it learns at the LM's rate.
        vision = name.startswith(("encoder.", "proj.")) and not name.endswith("pos_embed")
        groups.setdefault((vision, decay), []).append(p)
    return torch.optim.AdamW(
        [
            dict(params=ps, weight_decay=weight_decay if decay else 0.0, lr_scale=encoder_lr_scale if vision else 1.0)
            for (vision, decay), ps in sorted(groups.items())
        ],
        lr=lr,
        betas=(0.9, 0.99),
        eps=1e-8,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split evenly over the processes)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate of the language model")
    p.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=0.5,
        help="learning-rate factor of the ViT and projector (a from-scratch ViT trained at the LM's rate "
        "tends to collapse to image-independent features while the LM learns answer priors)",
    )
    p.add_argument(
        "--vit-attention",
        default="fixed",
        choices=["fixed", "learned"],
        help="fixed: the ViT's query/key projections and the LayerNorm before them keep their random "
        "initialisation (see fix_vit_attention); learned: everything trains",
    )
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", default="bidir", choices=["unidir", "bidir", "multidir", "snake", "zigzag"])
    p.add_argument("--layout", default="sandwich", choices=["first", "last", "sandwich"])
    p.add_argument(
        "--token-shift",
        default="data",
        choices=["data", "static"],
        help="data-dependent (RWKV-6 DDLerp) or static (RWKV-5) token shift",
    )
    p.add_argument(
        "--decay", default="data", choices=["data", "static"], help="data-dependent (RWKV-6) or static (RWKV-5) decay"
    )
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--grid", type=int, default=3, help="ShapesVQA grid (cells per side)")
    p.add_argument("--patch-size", type=int, default=None, help="default: image_size // grid (one patch per cell)")
    p.add_argument("--max-objects", type=int, default=None, help="default: min(5, grid**2)")
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--question-types", default=",".join(QUESTION_TYPES), help="comma-separated subset")
    p.add_argument(
        "--curriculum-fraction",
        type=float,
        default=0.25,
        help="the first fraction of the steps asks only --curriculum-types (0: the full mix throughout)",
    )
    p.add_argument("--curriculum-types", default="color_at,shape_at")
    p.add_argument("--instruction", action="store_true", help="append the short-answer instruction to questions")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--head-size", type=int, default=32)
    p.add_argument("--vit-width", type=int, default=128)
    p.add_argument("--vit-depth", type=int, default=2)
    p.add_argument("--eval-size", type=int, default=1000, help="held-out test-split samples scored at the end")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the test-split stream")
    p.add_argument(
        "--val-every",
        type=int,
        default=0,
        help="every this many steps, print greedy exact match on --val-size validation samples (0: never)",
    )
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights of this save_pretrained directory instead of a fresh initialisation",
    )
    p.add_argument("--out", type=Path, default=None, help="directory for save_pretrained (rank 0); none: no save")
    p.add_argument("--result-json", type=Path, default=None, help="write the summary (losses, accuracy) here (rank 0)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default 1)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument(
        "--dump-rank-weights",
        type=Path,
        default=None,
        help="(for tests) each rank writes its final weights, rank 0 also the initial ones, here",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("steps", "batch_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.eval_size < 0 or args.warmup < 0:
        p.error("--eval-size and --warmup must be >= 0")
    if args.lr <= 0:
        p.error("--lr must be > 0")
    if not 0 <= args.curriculum_fraction < 1:
        p.error(f"--curriculum-fraction must be in [0, 1), got {args.curriculum_fraction}")
    return args


def curriculum_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if not types or unknown:
        raise ValueError(f"--curriculum-types: unknown {unknown} (choose from {','.join(QUESTION_TYPES)})")
    return types


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    types = tuple(t.strip() for t in args.question_types.split(",") if t.strip())
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if not types or unknown:
        raise ValueError(f"--question-types: unknown {unknown} (choose from {','.join(QUESTION_TYPES)})")
    return ToyConfig(
        image_size=args.image_size,
        grid=args.grid,
        patch_size=args.patch_size,
        vit_width=args.vit_width,
        vit_depth=args.vit_depth,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        head_size=args.head_size,
        data_dependent_lerp=args.token_shift == "data",
        data_dependent_decay=args.decay == "data",
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        question_types=types,
        instruction=args.instruction,
    )


def launch_command(world: int, argv: Sequence[str]) -> str:
    """The command line that reproduces this run (torchrun for several processes)."""
    launcher = ["python"] if world == 1 else ["torchrun", "--standalone", f"--nproc_per_node={world}"]
    return shlex.join([*launcher, "examples/train_toy.py", *argv])


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate on the test split, save (rank 0). Returns a summary dict (on every rank)."""
    rank, world, device = setup_distributed(args.device, args.threads)
    log = (lambda *a: print(*a, flush=True)) if rank == 0 and not args.quiet else (lambda *a: None)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes {world}")
    local_batch = args.batch_size // world
    config = config_from_args(args)

    torch.manual_seed(args.seed)
    model = build_model(config, scan=args.scan, layout=args.layout, device=device)
    if args.init_from is not None:
        # Continue from a saved model (e.g. a longer schedule in two runs); sizes and variants must match.
        saved = VisualRWKV.from_pretrained(args.init_from)
        try:
            model.load_state_dict(saved.state_dict())
        except RuntimeError as e:
            raise ValueError(
                f"--init-from {args.init_from}: its weights do not fit the model these arguments build ({e})"
            ) from None
        del saved
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"toy VisualRWKV: {n_params / 1e6:.2f} M parameters, {model.image_tokens} tokens per image, "
        f"scan={model.scan!r}, layout={type(model.layout).__name__}, processes={world}, device={device}"
    )
    if args.dump_rank_weights is not None and rank == 0:
        from safetensors.torch import save_file

        args.dump_rank_weights.mkdir(parents=True, exist_ok=True)
        save_file(flat_state_dict(model), str(args.dump_rank_weights / "init.safetensors"))

    if args.vit_attention == "fixed":
        fix_vit_attention(model)
    collator = ToyCollator(model, instruction=config.instruction)
    # Stages of (steps, question types): an optional curriculum of questions about one cell first, then
    # the full mix. Each stage is its own deterministic stream, split over the ranks by a DistributedSampler.
    stages = [(args.steps, config.question_types)]
    first = int(args.curriculum_fraction * args.steps)
    if first:
        stages = [(first, curriculum_types(args.curriculum_types)), (args.steps - first, config.question_types)]
    loaders = []
    for n_steps, types in stages:
        stage_set = dataclasses.replace(config, question_types=types).dataset(
            "train", size=n_steps * args.batch_size, seed=args.seed
        )
        sampler = torch.utils.data.DistributedSampler(
            stage_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
        )
        loaders.append(
            torch.utils.data.DataLoader(stage_set, batch_size=local_batch, sampler=sampler, collate_fn=collator)
        )
    loader = itertools.chain(*loaders)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(
        model, lr=args.lr, weight_decay=args.weight_decay, encoder_lr_scale=args.encoder_lr_scale
    )
    model.train()
    start = last = time.perf_counter()
    history = []
    run_loss = run_correct = run_count = 0.0
    val_samples, val_history = None, []
    for step, batch in enumerate(loader):
        if step >= args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = group["lr_scale"] * lr_at(step, steps=args.steps, lr=args.lr, warmup=args.warmup)
        logits, _ = net(batch["input_ids"].to(device), batch["pixel_values"].to(device))
        labels = batch["labels"].to(device)
        loss, correct = answer_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        run_loss += loss.item()
        run_correct += int(correct)
        run_count += int((labels != IGNORE).sum())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            now = time.perf_counter()
            n = args.log_every if (step + 1) % args.log_every == 0 else (step + 1) % args.log_every
            entry = dict(
                step=step + 1,
                loss=run_loss / n,
                token_acc=run_correct / max(run_count, 1),
                lr=lr_at(step, steps=args.steps, lr=args.lr, warmup=args.warmup),
                elapsed=now - start,
            )
            history.append(entry)
            log(
                f"step {step + 1:5d}  loss {entry['loss']:.4f}  answer-token acc {100 * entry['token_acc']:5.1f}%  "
                f"lr {entry['lr']:.2e}  {n / (now - last):.2f} steps/s  ({now - start:.0f}s)"
            )
            run_loss = run_correct = run_count = 0.0
            last = now
        if args.val_every and (step + 1) % args.val_every == 0 and step + 1 < args.steps:
            # The val split (scenes disjoint from train and test), on rank 0 only: a progress signal.
            if rank == 0:
                if val_samples is None:
                    val = config.dataset("val", size=args.val_size, seed=args.seed)
                    val_samples = [val[i] for i in range(len(val))]
                ev = evaluate(model, val_samples, batch_size=args.eval_batch_size, instruction=config.instruction)
                val_history.append(dict(step=step + 1, accuracy=ev["accuracy"], per_type=ev["per_type"]))
                log(
                    f"  val exact match {100 * ev['accuracy']:.1f}%: "
                    + ", ".join(f"{t} {100 * c / n:.0f}" for t, (c, n) in ev["per_type"].items())
                )
            last = time.perf_counter()  # evaluation time is not training time
    train_seconds = time.perf_counter() - start

    if args.dump_rank_weights is not None:
        from safetensors.torch import save_file

        save_file(flat_state_dict(model), str(args.dump_rank_weights / f"rank{rank}.safetensors"))

    result: dict[str, Any] = dict(
        parameters=n_params, train_seconds=train_seconds, history=history, val_history=val_history, world_size=world
    )
    if args.eval_size:
        # Each rank scores its own stride of the held-out samples; the counts are summed.
        test_set = config.dataset("test", size=args.eval_size, seed=args.eval_seed)
        mine = [test_set[i] for i in range(rank, len(test_set), world)]
        ev = evaluate(model, mine, batch_size=args.eval_batch_size, instruction=config.instruction, device=device)
        types = sorted(set(config.question_types))
        counts = torch.tensor([ev["per_type"].get(t, [0, 0]) for t in types], dtype=torch.long, device=device)
        if world > 1:
            dist.all_reduce(counts)
        per_type = {t: [int(c), int(n)] for t, (c, n) in zip(types, counts.tolist()) if n}
        correct, total = sum(c for c, _ in per_type.values()), sum(n for _, n in per_type.values())
        result["eval"] = dict(
            correct=correct,
            total=total,
            accuracy=correct / max(total, 1),
            per_type=per_type,
            split="test",
            seed=args.eval_seed,
        )
        log(f"held-out exact match on {total} test-split samples:\n" + format_accuracy(result["eval"]))

    if rank == 0 and args.out is not None:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.save_dtype]
        # The training recipe travels inside config.json, so evaluate_toy.py and the demo can rebuild the
        # matching dataset and anyone can see how the weights were made.
        metadata = dict(
            trained_by="examples/train_toy.py",
            command=launch_command(world, args.argv),
            arguments={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "argv"},
            toy_config=dataclasses.asdict(config),
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            world_size=world,
            parameters=n_params,
            train_seconds=round(train_seconds, 1),
            eval=result.get("eval"),
        )
        save_model(model, args.out, dtype=dtype, metadata=metadata)
        log(f"saved to {args.out}")
    if rank == 0 and args.result_json is not None:
        args.result_json.parent.mkdir(parents=True, exist_ok=True)
        args.result_json.write_text(
            json.dumps(dict(result, argv=args.argv, toy_config=dataclasses.asdict(config)), indent=1) + "\n"
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
