"""VisualRWKV: vision encoder + projector + prompt layout + scan policy + an RWKV language model.

Letter legend: b batch, t time (prompt ids, one placeholder per image), T time after each placeholder is
replaced by its image tokens, n images, k tokens per image, w vision width, c channels, v vocabulary.

The data path::

    pixel_values [n, 3, H, W] --encoder--> [n, k, w] --proj--> [n, k, c] --+
    input_ids [b, t] (IMAGE_TOKEN_INDEX once per image) --emb-------------+--> x [b, T, c] + image spans
    for layer i: x = unpermute(block_i(permute(x, spans, scan, i)))      # block 0 applies ln0 to all of x
    logits = head(ln_out(x))                                               # [b, T, v]

The scan policy is plain data (``model.scan = MultiDir()`` switches it); the blocks know nothing about
images. Generation prefills the whole prompt this way, layer by layer with each layer's order, keeps every
layer's state, then decodes text tokens one at a time from that state (no image spans are involved after
the prompt, so decoding costs O(1) per token).

Parameter names: ``rwkv.*`` are the official names; ``proj.weight`` is the official key;
the encoder is a timm ViT under ``encoder.vit.*`` (``official_state_dict`` maps it back to the
``vit.vision_model.*`` Hugging Face names of the released checkpoints).

One class, several families (see docs/multimodal.md, "Families side by side"): the language model is an
:class:`RWKV6` (v6.0, HD/UHD) or an :class:`RWKV7` (v7.00); the encoder a single
:class:`~rwkv_vision.vision.VisionEncoder` (pixel_values ``[n, 3, H, W]``) or a
:class:`~rwkv_vision.vision.MultiEncoder` (pixel_values a dict tower -> ``[n, 3, H_i, W_i]``). With RWKV-7 the
blocks also pass block 0's value (``v_first``, one per position) along, permuted with the stream by the scan.

``pad_to_multiple`` (v7.00 files: 16) reproduces the official v7.00 forward: a fresh sequence is left-padded
with the embedding of ``pad_token_id`` (261, "\\n\\n") up to a multiple of it before block 0's ln0, the pads run
through every block, and their positions are dropped from the logits (the state is the one after pads and
sequence). A call that continues from a ``state`` is not padded (the official code never continues). In a
padded batch (``attention_mask``) each row gets the pads it would get alone ((-length) mod m, right before its
first token), and in a packed row (``cu_seqlens``) each sample gets its own in front of it, so rows and samples
read as they would alone.
Generation on such a model keeps one state per pad count by default, so that every step sees the padding the
official re-run-everything ``generate`` would give it (``generate(official_padding=...)``);
``generate(official_rerun=True)`` / :meth:`generate_official` is that official loop itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..chat import chat
from ..generation import GenerationConfig, GenerationOutput, generate, make_config
from ..image_tokens import IMAGE_TOKEN_INDEX, ImageSpan
from ..ops.cu_seqlens import check_cu_seqlens
from ..pretrained.paths import resolve as resolve_shipped
from ..processor import VisualRWKVProcessor
from ..prompt import PromptLayout, Sandwich, expand_image_embeddings, get_layout
from ..scan import (
    BiDir,
    MultiDir,
    ScanPolicy,
    UniDir,
    get_scan_policy,
    permute_spans,
    scanned_call,
    unpermute_spans,
)
from ..sections import (
    encoder_from_config,
    encoder_to_config,
    layout_from_config,
    layout_to_config,
    projector_from_config,
    projector_to_config,
    scan_from_config,
    scan_to_config,
)
from ..state import RWKVState
from ..vision.encoders import VisionEncoder
from ..vision.preprocess import ImagePreprocessor
from ..vision.projector import LinearProjector
from .config import RWKV7Config, VisualRWKVConfig
from .output import (
    IGNORE_INDEX,
    ModelOutput,
    mask_padded_labels,
    next_token_loss,
    padding_mask,
    reject_unknown_keywords,
)
from .rwkv6 import RWKV6
from .rwkv7 import RWKV7

__all__ = ["VisualRWKV"]


def _expanded_offsets(input_ids: torch.Tensor, spans, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens over the ids [1, t] -> over the expanded sequence: each image adds num_tokens - 1 positions
    after its placeholder."""
    places = (input_ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    extra = [span.num_tokens - 1 for span in spans[0]] if spans else []
    offsets = [p + sum(e for q, e in zip(places, extra) if q < p) for p in cu_seqlens.tolist()]
    return torch.tensor(offsets, dtype=torch.long, device=input_ids.device)


_FORWARD_KEYWORDS = (
    "input_ids",
    "pixel_values",
    "state",
    "image_embeds",
    "logits_to_keep",
    "labels",
    "attention_mask",
    "cu_seqlens",
)


#: The pad of the official v7.00 forward: "\n\n" (its STOP_TOKEN_INDEX), up to a multiple of the kernel's chunk.
V7_PAD_TOKEN = 261
V7_PAD_MULTIPLE = 16


def _is_multi(encoder: Any) -> bool:
    from ..vision.multi_encoder import MultiEncoder

    return isinstance(encoder, MultiEncoder)


def _image_count(pixel_values: Any) -> int:
    """n of ``[n, 3, H, W]`` or of a dict tower -> ``[n, 3, H_i, W_i]``."""
    if isinstance(pixel_values, Mapping):
        return next(iter(pixel_values.values())).shape[0] if pixel_values else 0
    return pixel_values.shape[0]


def _select_images(pixel_values: Any, start: int, stop: int) -> Any:
    if isinstance(pixel_values, Mapping):
        return {k: v[start:stop] for k, v in pixel_values.items()}
    return pixel_values[start:stop]


def _simplicity(policy: ScanPolicy) -> tuple[int, int]:
    return (policy.period, 0 if type(policy) in (UniDir, BiDir, MultiDir) else 1)


class VisualRWKV(nn.Module):
    """A visual language model: ``encoder`` -> ``proj`` -> (text + image embeddings) -> scanned ``rwkv``.

    Args (keyword only):
        rwkv: the language model (:class:`RWKV6` or :class:`RWKV7`).
        encoder: a :class:`~rwkv_vision.vision.VisionEncoder` or a :class:`~rwkv_vision.vision.MultiEncoder`
            (its grid and CLS position define the image spans).
        proj: maps ``[.., w] -> [.., c]``; default ``LinearProjector(w, c)`` (v6.0).
        scan: a :class:`~rwkv_vision.scan.ScanPolicy` (default :class:`BiDir`, the released weights).
        layout: a :class:`~rwkv_vision.prompt.PromptLayout` for :meth:`chat` (default :class:`Sandwich`);
            its grid is set from the encoder.
        tokenizer: anything with ``encode``/``decode``, used by :meth:`chat` (default: the World tokenizer,
            created on first use).
        preprocessor: PIL -> pixel_values for :meth:`chat` (default: CLIP preprocessing at the encoder's size).
        freeze_encoder: turn off gradients of the encoder (VisualRWKV keeps CLIP frozen).
        pad_to_multiple: None (default) or m > 1: left-pad every fresh sequence with the embedding of
            ``pad_token_id`` up to a multiple of m before the blocks, as the official v7.00 forward does
            (its files load with 16); see the module notes.
        pad_token_id: the id whose embedding pads (261, "\\n\\n", in v7.00).
    """

    #: :meth:`generate` without ``stop_tokens``/``eos_token_id`` stops at the tokenizer's stop tokens
    #: (:meth:`default_stop_tokens`), as transformers' ``generate`` stops at the model's EOS; set it to False
    #: (or pass ``stop_tokens=()``) to run every row to ``max_new_tokens``.
    stop_at_tokenizer_stops: bool = True

    def __init__(
        self,
        *,
        rwkv: RWKV6,
        encoder: VisionEncoder,
        proj: nn.Module | None = None,
        scan: ScanPolicy | str | None = None,
        layout: PromptLayout | str | None = None,
        tokenizer: Any = None,
        preprocessor: ImagePreprocessor | None = None,
        freeze_encoder: bool = True,
        pad_to_multiple: int | None = None,
        pad_token_id: int = V7_PAD_TOKEN,
    ):
        super().__init__()
        if not isinstance(rwkv, (RWKV6, RWKV7)):
            raise TypeError(f"rwkv must be an RWKV6 or an RWKV7, got {type(rwkv).__name__}")
        if not (isinstance(encoder, VisionEncoder) or _is_multi(encoder)):
            raise TypeError(f"encoder must be a VisionEncoder or a MultiEncoder, got {type(encoder).__name__}")
        if pad_to_multiple is not None and (
            not isinstance(pad_to_multiple, int) or isinstance(pad_to_multiple, bool) or pad_to_multiple < 1
        ):
            raise ValueError(f"pad_to_multiple must be None or an int >= 1, got {pad_to_multiple!r}")
        if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r}")
        if pad_to_multiple not in (None, 1) and pad_token_id >= rwkv.vocab_size:
            raise ValueError(f"pad_token_id must be an id in [0, {rwkv.vocab_size}), got {pad_token_id!r}")
        if pad_to_multiple not in (None, 1) and not isinstance(rwkv, RWKV7):
            raise ValueError("pad_to_multiple: the padding of the official v7.00 forward applies to an RWKV7 only")
        self.pad_to_multiple = None if pad_to_multiple in (None, 1) else pad_to_multiple
        self.pad_token_id = pad_token_id
        self.rwkv = rwkv
        self.encoder = encoder
        if proj is None:
            w = rwkv.emb.weight
            proj = LinearProjector(encoder.width, rwkv.n_embd, device=w.device, dtype=w.dtype)
        self.proj = proj
        if scan is None:
            self._scan = BiDir()  # the released configuration: not worth a warning on a small model
        else:
            self.scan = scan
        self.layout = Sandwich() if layout is None else layout
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    # --- configuration -----------------------------------------------------------------------------------

    @property
    def scan(self) -> ScanPolicy:
        """The scan policy; assign a policy (or its name) to switch: ``model.scan = MultiDir()``."""
        return self._scan

    @scan.setter
    def scan(self, policy: ScanPolicy | str) -> None:
        self._scan = get_scan_policy(policy)
        warning = self.scan_warning(self._scan)
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=3)  # past nn.Module.__setattr__, at the assignment

    def scan_warning(self, policy: ScanPolicy | str) -> str | None:
        """Why ``policy`` may not do what its name says on this model, or None.

        Two cases: its period (the layers after which its orders repeat) exceeds the model's layers, so some
        of its orders are never read (``MultiDir`` has 4, one per direction); or on this model's layers and
        patch grid it reads exactly the orders of a simpler registered policy (a shorter period, or one of
        UniDir/BiDir/MultiDir): ``MultiDir`` equals ``BiDir`` on a 2-layer model, ``Zigzag`` equals
        ``UniDir`` on a 2 x 2 grid, so swapping between them changes nothing. Assigning ``model.scan`` warns with
        this message (a ``UserWarning``)."""
        from ..scan import scan_policy_names

        policy = get_scan_policy(policy)
        n_layer = self.rwkv.n_layer
        rows, cols = self.encoder.grid

        def orders(p: ScanPolicy) -> tuple | None:
            try:
                return tuple(tuple(p.order(i, rows, cols) or range(rows * cols)) for i in range(n_layer))
            except (ValueError, TypeError):  # e.g. a policy that needs a square grid
                return None

        notes = []
        if policy.period > n_layer:
            notes.append(
                f"{policy!r} has {policy.period} per-layer orders but the model has {n_layer} layers, so only "
                f"the first {n_layer} are read"
            )
        mine = orders(policy)
        if mine is not None:
            for name in scan_policy_names():
                other = get_scan_policy(name)
                # Only a simpler policy counts (a shorter period, or UniDir/BiDir/MultiDir against the others):
                # BiDir is not "MultiDir on 2 layers", and UniDir is not "Zigzag on a 2 x 2 grid".
                if other != policy and _simplicity(other) < _simplicity(policy) and orders(other) == mine:
                    notes.append(
                        f"on this {n_layer}-layer model with a {rows} x {cols} patch grid it reads the patches in "
                        f"exactly the orders of {other!r}, so the two give the same logits"
                    )
                    break
        if not notes:
            return None
        return f"scan policy {policy!r}: " + "; ".join(notes) + " (more layers or a larger patch grid tell them apart)"

    @property
    def layout(self) -> PromptLayout:
        """The prompt layout used by :meth:`chat`, matched to the encoder's grid."""
        return self._layout

    @layout.setter
    def layout(self, layout: PromptLayout | str) -> None:
        rows, cols = self.encoder.grid
        self._layout = get_layout(layout).with_grid(rows, cols, cls=self.encoder.cls)

    @property
    def image_tokens(self) -> int:
        """k: embeddings per image (577 for CLIP ViT-L/14-336 with CLS last)."""
        return self.encoder.num_tokens

    def get_tokenizer(self):
        if self.tokenizer is None:
            from ..tokenizers import WorldTokenizer

            self.tokenizer = WorldTokenizer()
        return self.tokenizer

    def get_preprocessor(self) -> ImagePreprocessor:
        if self.preprocessor is None:
            if _is_multi(self.encoder):
                from ..vision.multi_preprocess import MultiImagePreprocessor

                kind = getattr(self.encoder, "preprocessor_class", MultiImagePreprocessor)  # TiledEncoder: tiles
                self.preprocessor = kind.for_encoder(self.encoder)
            else:
                self.preprocessor = ImagePreprocessor(self.encoder.image_size[0])
        return self.preprocessor

    @property
    def image_preprocessor(self) -> ImagePreprocessor:
        """PIL image(s) -> pixel_values [n, 3, H, W] for this encoder (CLIP preprocessing at the encoder's size
        unless one was given); saved in and restored from ``config.json``."""
        return self.get_preprocessor()

    @image_preprocessor.setter
    def image_preprocessor(self, preprocessor: ImagePreprocessor | None) -> None:
        if preprocessor is not None and not callable(preprocessor):
            raise TypeError(
                f"image_preprocessor must be an ImagePreprocessor (or None), got {type(preprocessor).__name__}"
            )
        self.preprocessor = preprocessor

    def _processor(self, layout: PromptLayout | str | None = None, tokenizer: Any = None) -> VisualRWKVProcessor:
        # The layout keeps the encoder's grid; a tokenizer given here leaves the model's untouched.
        rows, cols = self.encoder.grid
        lay = self.layout if layout is None else get_layout(layout).with_grid(rows, cols, cls=self.encoder.cls)
        tok = tokenizer if tokenizer is not None else self.get_tokenizer()
        return VisualRWKVProcessor(tokenizer=tok, image_processor=self.get_preprocessor(), layout=lay)

    @property
    def processor(self) -> VisualRWKVProcessor:
        """The model's tokenizer, image preprocessor and layout (with the encoder's grid) as one
        :class:`~rwkv_vision.processor.VisualRWKVProcessor` (made afresh from the current attributes)."""
        return self._processor()

    # --- loading and saving ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Any,
        filename: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> VisualRWKV:
        """Load a model: the name of one shipped in the package (``"shapes-vqa-tiny"``, offline; see
        :func:`rwkv_vision.pretrained.list_pretrained`), a :meth:`save_pretrained` directory, a released ``.pth``, a ``.safetensors`` file with
        the released key names, or a Hugging Face Hub repo id (with ``filename`` for a single file, e.g.
        ``VisualRWKV.from_pretrained("howard-hou/visualrwkv-6", "VisualRWKV-v060-1B6-v1.0-20240612.pth")``).

        ``dtype``/``device`` cast after reading (default: the file's dtype, on the CPU). Keyword options:
        ``cache_dir``, ``progress`` (progress bar; default only for files >= 256 MiB), and ``scan``,
        ``layout``, ``tokenizer``, ``preprocessor``, ``freeze_encoder`` replacing the checkpoint's. Returns
        the model in eval mode. See :func:`rwkv_vision.checkpoint.from_pretrained`.
        """
        from ..checkpoint.pretrained import from_pretrained

        name_or_path = resolve_shipped(name_or_path)
        return from_pretrained(name_or_path, filename, revision, dtype, device, cls=cls, **kwargs)

    def save_pretrained(
        self, path: str | Any, *, dtype: torch.dtype | str | None = None, metadata: dict | None = None
    ) -> Any:
        """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) into the directory ``path``
        (or, for a ``.safetensors`` path, one file in the released flat layout). Returns the path.
        See :func:`rwkv_vision.checkpoint.save_pretrained` and :mod:`rwkv_vision.checkpoint.config_json`."""
        from ..checkpoint.pretrained import save_pretrained

        return save_pretrained(self, path, dtype=dtype, metadata=metadata)

    @property
    def config(self) -> VisualRWKVConfig:
        """The :class:`VisualRWKVConfig` of this model (language model, encoder, projector, scan, layout);
        ``VisualRWKV.from_config(model.config)`` builds a freshly initialised copy."""
        return VisualRWKVConfig(
            rwkv=self.rwkv.config,
            encoder=encoder_to_config(self.encoder),
            projector=projector_to_config(self.proj),
            scan=scan_to_config(self.scan),
            layout=layout_to_config(self.layout),
            padding=self.padding_config(),
        )

    def padding_config(self) -> dict[str, Any] | None:
        """The ``padding`` section: ``{"multiple": m, "token": id}`` with :attr:`pad_to_multiple` set, else None."""
        if self.pad_to_multiple is None:
            return None
        return {"multiple": self.pad_to_multiple, "token": self.pad_token_id}

    def to_config(self) -> dict[str, Any]:
        """The ``config.json`` data that rebuilds this model (see :mod:`rwkv_vision.checkpoint.config_json`)."""
        from ..checkpoint.config_json import model_to_config

        return model_to_config(self)[0]

    @classmethod
    def from_config(
        cls, config: VisualRWKVConfig | Mapping[str, Any], *, device=None, dtype=None, **kwargs: Any
    ) -> VisualRWKV:
        """A freshly initialised model from a :class:`VisualRWKVConfig`, or from ``config.json`` data (which
        also holds the processor's sections; a ``"word"``/``"class"`` tokenizer entry then needs
        ``tokenizer=``, since its file is not part of the config). ``kwargs`` go to the constructor."""
        if not isinstance(config, VisualRWKVConfig):
            from ..checkpoint.config_json import model_from_config

            return model_from_config(config, cls=cls, device=device, dtype=dtype, **kwargs)
        lm_cls = RWKV7 if isinstance(config.rwkv, RWKV7Config) else RWKV6
        rwkv = lm_cls(config.rwkv, device=device, dtype=dtype)
        encoder = encoder_from_config(config.encoder, device=device, dtype=dtype)
        proj = projector_from_config(config.projector, device=device, dtype=dtype)
        kwargs.setdefault("freeze_encoder", bool(config.encoder.get("frozen", True)))
        if config.padding is not None:
            kwargs.setdefault("pad_to_multiple", config.padding["multiple"])
            kwargs.setdefault("pad_token_id", config.padding["token"])
        return cls(
            rwkv=rwkv,
            encoder=encoder,
            proj=proj,
            scan=scan_from_config(config.scan),
            layout=layout_from_config(config.layout),
            **kwargs,
        )

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> VisualRWKV:
        """Build from a released flat checkpoint of any loadable family, told apart by its keys: v6.0
        (``rwkv.*``, ``vit.vision_model.*``, ``proj.weight``; see
        :func:`rwkv_vision.checkpoint.official.visualrwkv_from_official_state_dict`), HD or v7.00 (``rwkv.*``,
        ``vit.{dino,siglip,sam}_featurizer.*``, ``proj.*``; see :mod:`rwkv_vision.checkpoint.families`)."""
        from ..checkpoint.pretrained import load_released_state_dict

        return load_released_state_dict(state_dict, cls=cls, **kwargs)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under the released checkpoint's names: v6.0 (``rwkv.*``, ``vit.vision_model.*``,
        ``proj.weight``; a CLIP encoder and the linear projector) or v7.00 (``rwkv.*`` x070,
        ``vit.{dino,siglip,sam}_featurizer.*``, ``proj.{gate,o_proj,ln_v}.*``; an RWKV-7 model with a
        MultiEncoder and the context-gating projector)."""
        if isinstance(self.rwkv, RWKV7) or _is_multi(self.encoder):
            from ..checkpoint.families import visualrwkv7_official_state_dict

            return visualrwkv7_official_state_dict(self)
        from ..checkpoint.official import visualrwkv_official_state_dict

        return visualrwkv_official_state_dict(self)

    # --- the model ---------------------------------------------------------------------------------------

    def encode_images(
        self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor], *, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """pixel_values [n, 3, H, W] (a dict tower -> [n, 3, H_i, W_i] for a MultiEncoder) -> image embeddings
        [n, k, c] in the LM's dtype. ``grid`` (a MultiEncoder's features only) average-pools the features to
        that grid before the projector, as v7.00's ``num_token_per_image`` does."""
        feats = self.encoder(pixel_values)
        if grid is not None and tuple(grid) != tuple(self.encoder.grid):
            from ..vision.spatial import pool_grid

            feats = pool_grid(feats, self.encoder.grid, grid)
        proj_param = next(self.proj.parameters(), None)
        if proj_param is not None:
            feats = feats.to(proj_param.dtype)
        return self.proj(feats).to(self.rwkv.emb.weight.dtype)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        *,
        image_embeds: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[list[ImageSpan]]]:
        """input_ids [b, t] (+ images) -> (embeddings [b, T, c], image spans per batch row).

        Images come as ``pixel_values`` [n, 3, H, W] or already projected ``image_embeds`` [n, k, c] (to reuse
        an encoding), one per :data:`IMAGE_TOKEN_INDEX`, taken in order, row 0 first.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a [b, t] tensor, got {got}")
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("pass pixel_values or image_embeds, not both")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        input_ids = input_ids.to(self.rwkv.emb.weight.device)
        run_id = self.image_run_id
        if run_id is not None and bool((input_ids == run_id).any()):
            return self._embed_runs(input_ids, pixel_values, image_embeds, run_id)
        text = input_ids[input_ids != IMAGE_TOKEN_INDEX]
        if text.numel():
            # Checked here (one host sync) because an out-of-range id reaches the embedding, where on CUDA it
            # is an opaque device assert.
            low, high = (int(v) for v in torch.stack(torch.aminmax(text)).tolist())
            if low < 0 or high >= self.rwkv.vocab_size:
                raise ValueError(
                    f"input_ids must be in [0, vocab_size = {self.rwkv.vocab_size}) or be IMAGE_TOKEN_INDEX "
                    f"({IMAGE_TOKEN_INDEX}) once per image, got text ids in [{low}, {high}]"
                )
        n = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if pixel_values is None and image_embeds is None:
            if n:
                raise ValueError(
                    f"input_ids hold {n} image placeholders (IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX}) but no "
                    "pixel_values were given"
                )
            return self.rwkv.embed(input_ids), [[] for _ in range(input_ids.shape[0])]
        if pixel_values is not None:
            self._check_pixel_values(pixel_values, n)
            image_embeds = self.encode_images(pixel_values) if n else []
        return expand_image_embeddings(
            input_ids, image_embeds, self.rwkv.embed, grids=self.encoder.grid, cls=self.encoder.cls
        )

    @property
    def image_run_id(self) -> int | None:
        """The placeholder id of a layout whose prompts hold one id per image token (v7.00: a run of k ids
        65535 per image, as the official ``tokenize_with_image_token`` makes), or None for layouts with one
        :data:`IMAGE_TOKEN_INDEX` per image. With it, every such id in ``input_ids`` is an image position."""
        if hasattr(self.layout, "expand") and isinstance(getattr(self.layout, "image_token_id", None), int):
            return self.layout.image_token_id
        return None

    def count_images(self, input_ids: torch.Tensor) -> int:
        """n: the images ``input_ids`` hold (placeholders, or runs of :attr:`image_run_id`)."""
        run_id = self.image_run_id
        if run_id is not None and bool((input_ids == run_id).any()):
            # One image per maximal run (the layouts separate images by "\n"); a run of m * k ids is m images.
            k = max(self.encoder.num_tokens, 1)
            flags = (input_ids.reshape(-1) == run_id).tolist()
            runs, length = [], 0
            for flag in flags + [False]:
                if flag:
                    length += 1
                elif length:
                    runs.append(length)
                    length = 0
            return sum(n // k if n % k == 0 else 1 for n in runs)
        return int((input_ids == IMAGE_TOKEN_INDEX).sum())

    def _embed_runs(self, input_ids, pixel_values, image_embeds, run_id: int):
        # The official v7.00 insertion: the ids keep their length; image positions are overwritten in order.
        if bool((input_ids == IMAGE_TOKEN_INDEX).any()):
            raise ValueError(
                f"input_ids mix IMAGE_TOKEN_INDEX ({IMAGE_TOKEN_INDEX}) with runs of the layout's image id {run_id}"
            )
        k = self.encoder.num_tokens
        found = int((input_ids == run_id).sum())
        layout, grid = self.layout, None
        images = _image_count(pixel_values) if isinstance(pixel_values, (Mapping, torch.Tensor)) else 0
        if images and found % images == 0 and found // images != k and _is_multi(self.encoder):
            # Runs shorter than the encoder's k tokens: the ids say how many tokens each image has (the official
            # num_token_per_image, e.g. evaluate.py's default 16), so the features are pooled to that grid.
            side = int(round((found // images) ** 0.5))
            rows, cols = self.encoder.grid
            if side * side == found // images and 1 <= side <= min(rows, cols):
                grid, k = (side, side), side * side
                layout = layout.with_grid(side, side, cls=None)
        if found % k:
            raise ValueError(f"input_ids hold {found} image ids ({run_id}), not a multiple of {k} tokens per image")
        n = found // k
        text = input_ids[input_ids != run_id]
        if text.numel():
            low, high = (int(v) for v in torch.stack(torch.aminmax(text)).tolist())
            if low < 0 or high >= self.rwkv.vocab_size:
                raise ValueError(
                    f"input_ids must be in [0, vocab_size = {self.rwkv.vocab_size}) or be runs of {k} image ids "
                    f"({run_id}), got text ids in [{low}, {high}]"
                )
        if pixel_values is None and image_embeds is None:
            raise ValueError(f"input_ids hold {n} image(s) ({found} ids {run_id}) but no pixel_values were given")
        if pixel_values is not None:
            self._check_pixel_values(pixel_values, n)
            image_embeds = self.encode_images(pixel_values, grid=grid)

        def embed_fn(ids: torch.Tensor) -> torch.Tensor:
            # Image rows are overwritten, so a vocabulary without the placeholder row (a small test model)
            # embeds id 0 there: the result is the same.
            return self.rwkv.embed(ids.masked_fill(ids == run_id, 0) if run_id >= self.rwkv.vocab_size else ids)

        return layout.expand(input_ids, image_embeds, embed_fn)

    def _check_pixel_values(self, pixel_values: Any, n: int) -> None:
        if _is_multi(self.encoder):
            names = self.encoder.names
            if not isinstance(pixel_values, Mapping) or set(pixel_values) != set(names):
                got = sorted(pixel_values) if isinstance(pixel_values, Mapping) else type(pixel_values).__name__
                raise ValueError(
                    f"pixel_values must be a dict with one [n, 3, H, W] tensor per tower {names}, got {got}"
                )
            tensors = [pixel_values[name] for name in names]
        else:
            tensors = [pixel_values]
        for name, t in zip(getattr(self.encoder, "names", ["pixel_values"]), tensors):
            where = "pixel_values" if len(tensors) == 1 else f"pixel_values[{name!r}]"
            dims = getattr(self.encoder, "pixel_dims", 4)  # a TiledEncoder's: [n, pictures, 3, H, W]
            if not isinstance(t, torch.Tensor) or t.dim() != dims:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where} must be [n, 3, H, W] (one image per placeholder), got {got}")
            if t.shape[0] != n:
                raise ValueError(
                    f"input_ids hold {n} image placeholders (IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX}) but "
                    f"{where} has {t.shape[0]} images"
                )
            if n and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{where} must be finite: it holds NaN or infinite values")

    def forward_embeds(
        self,
        x: torch.Tensor,
        spans: Sequence[Sequence[ImageSpan]] | None = None,
        state: RWKVState | None = None,
        *,
        logits_to_keep: int = 0,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RWKVState]:
        """The scanned language model on embeddings: x [b, T, c] -> (logits [b, T, v] (or the last
        ``logits_to_keep``), state). Each block sees its layer's patch order (``self.scan``).
        ``attention_mask`` [b, T] bool: padding (left or right, never inside an image span), skipped by every
        block, so each row's logits and state are its own. ``cu_seqlens`` [N + 1]: sequences packed in one row
        (offsets over the expanded sequence; state of N rows). Both for RWKV-6 and RWKV-7 language models; with
        :attr:`pad_to_multiple` every fresh row / packed sample gets its own official pads (module notes)."""
        if x.dim() != 3 or x.shape[-1] != self.rwkv.n_embd:
            raise ValueError(f"x must be [b, T, c = {self.rwkv.n_embd}], got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("the sequence is empty (T = 0)")
        if isinstance(self.rwkv, RWKV7):
            return self._forward_embeds7(
                x, spans, state, logits_to_keep=logits_to_keep, attention_mask=attention_mask, cu_seqlens=cu_seqlens
            )
        self.rwkv._check_state(state, x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1)
        spans = spans if spans and any(spans) else None
        seq = {} if attention_mask is None else {"attention_mask": attention_mask}
        if cu_seqlens is not None:
            seq["cu_seqlens"] = cu_seqlens
        layers = []
        for i, block in enumerate(self.rwkv.blocks):
            layer_state = None if state is None else state[i]
            if spans is None:
                x, layer_state = block(x, layer_state, return_state=True, **seq)
            else:
                x, layer_state = scanned_call(
                    block, x, layer_state, policy=self.scan, layer_index=i, spans=spans, return_state=True, **seq
                )
            layers.append(layer_state)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.rwkv.unembed(x), RWKVState(layers)

    def pad_count(self, t: int) -> int:
        """How many pads a fresh sequence of t positions gets: (-t) mod :attr:`pad_to_multiple` (0 without)."""
        return (-t) % self.pad_to_multiple if self.pad_to_multiple else 0

    def _forward_embeds7(
        self,
        x: torch.Tensor,
        spans: Sequence[Sequence[ImageSpan]] | None,
        state: RWKVState | None,
        *,
        logits_to_keep: int = 0,
        pad: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RWKVState]:
        # RWKV-7: block 0's value v_first [b, T, c] travels with the stream, in the same (scanned) order.
        if attention_mask is not None and cu_seqlens is not None:
            raise ValueError("pass cu_seqlens (packed) or attention_mask (padded), not both")
        rows = x.shape[0]
        if cu_seqlens is not None:
            rows = check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1], "VisualRWKV.forward_embeds")
        if state is not None:
            self.rwkv.check_state(state, rows)
        spans = spans if spans and any(spans) else None
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(device=x.device, dtype=torch.bool)
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"attention_mask must be [b, T] = {list(x.shape[:2])}, got {list(mask.shape)}")
        padding = bool(self.pad_to_multiple) and (state is None if pad is None else pad)
        keep = None  # how to drop the official pads afterwards: a count of leading columns, or an index
        if padding and cu_seqlens is not None:
            x, spans, cu_seqlens, keep = self._official_pads_packed(x, spans, cu_seqlens)
        elif padding and mask is not None:
            x, spans, mask, keep = self._official_pads_masked(x, spans, mask)
        elif padding and self.pad_count(x.shape[1]):
            keep = self.pad_count(x.shape[1])
            pads = self.rwkv.emb.weight[self.pad_token_id].to(x.dtype).expand(x.shape[0], keep, x.shape[-1])
            x = torch.cat([pads, x], dim=1)
            if spans is not None:
                spans = [[replace(span, start=span.start + keep) for span in row] for row in spans]
        seq = {} if mask is None else {"attention_mask": mask}
        if cu_seqlens is not None:
            seq["cu_seqlens"] = cu_seqlens
        layers = []
        v_first = None
        for i, block in enumerate(self.rwkv.blocks):
            layer_state = None if state is None else state[i]
            kw = dict(return_state=True, v_first=v_first, return_v_first=True, **seq)
            if spans is None:
                x, layer_state, v_first = block(x, layer_state, **kw)
            else:
                xp = permute_spans(x, spans, self.scan, i)
                moved = xp is not x  # permute_spans returns x itself when nothing moves at this layer
                if moved and v_first is not None:
                    kw["v_first"] = permute_spans(v_first, spans, self.scan, i)
                xp, layer_state, vp = block(xp, layer_state, **kw)
                x = unpermute_spans(xp, spans, self.scan, i) if moved else xp
                v_first = unpermute_spans(vp, spans, self.scan, i) if moved else vp
            layers.append(layer_state)
        if isinstance(keep, int):
            x = x[:, keep:]
        elif keep is not None:
            x = x[:, keep]
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.rwkv.unembed(x), RWKVState(layers)

    def _pad_rows(self, x: torch.Tensor, count: int) -> torch.Tensor:
        return self.rwkv.emb.weight[self.pad_token_id].to(x.dtype).expand(x.shape[0], count, x.shape[-1])

    def _official_pads_masked(self, x, spans, mask):
        """The official left pads of each row of a padded batch: a row of L tokens gets (-L) mod m pads right
        before its first token, exactly what it gets alone. ``P`` = the most any row needs: that many masked
        columns are put in front, so every row has room, and dropped again after the blocks (the pads sit
        where the caller's mask already has padding, or in the columns dropped)."""
        b, t, _ = x.shape
        counts = (-mask.sum(dim=1)) % self.pad_to_multiple  # [b]; a row of padding only gets none
        extra = int(counts.max())  # one small copy
        if extra == 0:
            return x, spans, mask, None
        steps = torch.arange(t, device=x.device)
        first = torch.where(mask, steps, t).amin(dim=1) + extra  # [b], in the widened frame
        x = torch.cat([x.new_zeros(b, extra, x.shape[-1]), x], dim=1)
        mask = torch.cat([mask.new_zeros(b, extra), mask], dim=1)
        wide = torch.arange(t + extra, device=x.device).unsqueeze(0)
        is_pad = (wide >= (first - counts).unsqueeze(1)) & (wide < first.unsqueeze(1))
        x = torch.where(is_pad.unsqueeze(-1), self._pad_rows(x, 1), x)
        if spans is not None:
            spans = [[replace(span, start=span.start + extra) for span in row] for row in spans]
        return x, spans, mask | is_pad, extra

    def _official_pads_packed(self, x, spans, cu_seqlens):
        """The official left pads of each packed sequence (as it gets alone), inserted before it; returns the
        new offsets and the index of the sequences' own positions, to drop the pads after the blocks."""
        bounds = [int(v) for v in cu_seqlens.tolist()]
        pieces, new_bounds, keep, shift_at = [], [0], [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            count = self.pad_count(end - start) if end > start else 0
            if count:
                pieces.append(self._pad_rows(x, count))
            pieces.append(x[:, start:end])
            base = new_bounds[-1] + count
            keep.extend(range(base, base + end - start))
            new_bounds.append(base + end - start)
            shift_at.append((start, end, base - start))
        x = torch.cat(pieces, dim=1)
        if spans is not None:
            spans = [
                [
                    replace(span, start=span.start + next(d for a, e, d in shift_at if a <= span.start < e))
                    for span in row
                ]
                for row in spans
            ]
        new_cu = torch.tensor(new_bounds, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
        return x, spans, new_cu, torch.tensor(keep, dtype=torch.long, device=x.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        state: RWKVState | None = None,
        *,
        image_embeds: torch.Tensor | Sequence[torch.Tensor] | None = None,
        logits_to_keep: int = 0,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **unknown: Any,
    ) -> ModelOutput:
        """Logits over the expanded sequence.

        Args:
            input_ids: [b, t] ids with :data:`IMAGE_TOKEN_INDEX` once per image (or, with a run layout such as
                v7.00's, a run of k ids :attr:`image_run_id` per image: the official ids).
            pixel_values: [n, 3, H, W], one image per placeholder in order (row 0 first); for a MultiEncoder a
                dict tower -> [n, 3, H_i, W_i]; None for text.
            state: the state after earlier tokens (None: a fresh sequence). Images must lie wholly in one call.
            image_embeds: instead of pixel_values, projected image embeddings [n, k, c].
            logits_to_keep: 0 for every position, k > 0 for the last k.
            labels: next-token targets aligned with ``input_ids`` ([b, t], e.g. ``input_ids.clone()`` with -100
                on the prompt), or already expanded ([b, T]). Each image placeholder's label becomes k labels
                of -100 (:meth:`expand_labels`), so image positions are never targets, whatever the label at
                the placeholder; then ``logits[:, i]`` is scored against ``labels[:, i + 1]`` (shifted inside,
                as in transformers). Gives ``out.loss``; needs ``logits_to_keep=0``.
            attention_mask: [b, t] 1 for tokens, 0 for padding, left or right (see :meth:`RWKV6.forward`):
                padded steps leave the state alone, so a row's logits at its tokens and its row of
                ``out.state`` equal the row run alone; padded positions are never scored.
            cu_seqlens: [N + 1] offsets over ``input_ids`` [1, t] of N samples packed in one row (e.g.
                ``ConversationCollator(pack=True)``): each read from its own state (N rows), images expanded
                inside their sample, no target across a boundary. Not with ``attention_mask``.
        Returns:
            a :class:`~rwkv_vision.models.output.ModelOutput`: ``.logits`` [b, T, v] with
            T = t + n_row * (k - 1), ``.state``, ``.loss`` (None without labels);
            ``logits, state = model(...)`` unpacks as before.
        """
        reject_unknown_keywords("VisualRWKV.forward", unknown, _FORWARD_KEYWORDS)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        if labels is not None and logits_to_keep:
            raise ValueError("VisualRWKV.forward: labels score every position; pass logits_to_keep=0 with them")
        padded = None
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            padded = padding_mask("VisualRWKV.forward", attention_mask, *input_ids.shape)
            if cu_seqlens is not None:
                if attention_mask is not None:
                    raise ValueError("VisualRWKV.forward: pass cu_seqlens (packed) or attention_mask, not both")
                check_cu_seqlens(cu_seqlens, *input_ids.shape, "VisualRWKV.forward")
        x, spans = self.embed(input_ids, pixel_values, image_embeds=image_embeds)
        mask = None
        if padded is not None:  # over the expanded sequence: an image's tokens are tokens of its row
            mask = self.expand_labels(input_ids.to(x.device), padded.to(x.device).long(), spans, fill=1) != 0
        cu = None if cu_seqlens is None else _expanded_offsets(input_ids.to(x.device), spans, cu_seqlens)
        logits, state = self.forward_embeds(
            x, spans, state, logits_to_keep=logits_to_keep, attention_mask=mask, cu_seqlens=cu
        )
        loss = None
        if labels is not None:
            labels = self.expand_labels(input_ids.to(x.device), labels, spans)
            if self.image_run_id is not None:  # runs: the ids are already expanded; image ids are never targets
                labels = labels.masked_fill(input_ids.to(x.device) == self.image_run_id, IGNORE_INDEX)
            if mask is not None:
                labels = mask_padded_labels(labels, mask)
            if cu is not None:  # a sample's first label is no target of the sample before it
                labels = labels.clone()
                labels[:, cu[:-1][cu[1:] > cu[:-1]]] = IGNORE_INDEX
            loss = next_token_loss(logits, labels)
        return ModelOutput(logits=logits, state=state, loss=loss)

    @staticmethod
    def expand_labels(
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        spans: Sequence[Sequence[ImageSpan]],
        *,
        fill: int = IGNORE_INDEX,
    ) -> torch.Tensor:
        """Labels aligned with ``input_ids`` [b, t] -> labels aligned with the expanded sequence [b, T].

        Each :data:`IMAGE_TOKEN_INDEX` position becomes ``span.num_tokens`` positions of ``fill`` (-100: image
        tokens are never targets); text labels keep their order. ``spans`` are :meth:`embed`'s. Labels that
        are already [b, T] are returned with the image positions set to ``fill``."""
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[0] != input_ids.shape[0]:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be [b, t] like input_ids {list(input_ids.shape)} (or [b, T]), got {got}")
        b, t = input_ids.shape
        sizes = [[span.num_tokens for span in row] for row in spans] if spans else [[] for _ in range(b)]
        big_t = t + sum(k - 1 for k in sizes[0]) if sizes else t
        labels = labels.to(device=input_ids.device, dtype=torch.long)
        if labels.shape[1] == big_t and big_t != t:
            image = torch.zeros_like(labels, dtype=torch.bool)
            for r, row in enumerate(spans):
                for span in row:
                    image[r, span.start : span.start + span.num_tokens] = True
            return labels.masked_fill(image, fill)
        if labels.shape[1] != t:
            raise ValueError(
                f"labels must be [b, t] = {[b, t]} like input_ids, or [b, T] = {[b, big_t]} over the expanded "
                f"sequence, got {list(labels.shape)}"
            )
        is_image = input_ids == IMAGE_TOKEN_INDEX
        repeats = torch.ones_like(input_ids)
        for r in range(b):
            positions = is_image[r].nonzero().flatten().tolist()
            for j, k in zip(positions, sizes[r] if r < len(sizes) else []):
                repeats[r, j] = k
        values = labels.masked_fill(is_image, fill)
        return torch.repeat_interleave(values.flatten(), repeats.flatten()).view(b, -1)

    # --- generation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        config: GenerationConfig | None = None,
        *,
        state: RWKVState | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        official_rerun: bool = False,
        official_padding: bool | None = None,
        ctx_len: int | None = None,
        **overrides: Any,
    ) -> GenerationOutput:
        """Prefill the prompt (images and scans included) once, then decode from the cached state.

        ``official_rerun=True`` instead reproduces the official VisualRWKV ``generate`` exactly (one prompt,
        greedy): every step re-runs the whole sequence from its embeddings (re-padded, with
        :attr:`pad_to_multiple`, to the multiple that sequence needs), takes the argmax of the last position,
        stops after emitting a stop token (it is in the output), else appends that token's embedding and keeps
        the last ``ctx_len`` positions (None: all). O(t) per token; see :meth:`generate_official`.

        ``official_padding`` (models with :attr:`pad_to_multiple` m, i.e. v7.00; the default for them when no
        ``state`` is given) decodes from cached states, yet every token's logits are those of the official
        re-padded forward: the prompt is prefilled after each of the m possible pad counts (m states per row,
        one batched prefill) and step j reads the state whose pad count the official code would use for that
        length, ``(-(t + j)) mod m``. The same tokens as ``official_rerun`` (without its ``ctx_len``
        truncation) at m times the work of plain cached decoding per token, O(1) in the length; sampling,
        batches and streaming work as usual. ``official_padding=False`` decodes from the one state of the
        padded prompt (token j then sees the prompt's pad count, not the official one; cheapest).

        input_ids [b, t] with placeholders; pixel_values [n, 3, H, W]. Or a batch of prompts of different
        lengths and image counts: ``input_ids`` a list of b id lists (or 1-D tensors), ``pixel_values`` a list
        of b image tensors [n_i, 3, H, W] (None for a row without images) or one [n, 3, H, W] tensor taken in
        row order; the prompts are prefilled in one call (left-padded, the padding masked so that it leaves each
        row's state alone), then all rows decode together and stop one by one, with the tokens one-by-one
        generation gives. A padded [b, t] tensor with ``attention_mask`` (left padding, as transformers users pad
        for generation, or right) is prefilled the same way.
        ``config``/``overrides`` as in
        :func:`rwkv_vision.generation.generate` (e.g. ``max_new_tokens=32, do_sample=True``;
        ``eos_token_id`` is an alias of ``stop_tokens``). With :attr:`stop_at_tokenizer_stops` set and no stop
        tokens given, generation stops at :meth:`default_stop_tokens` (the model's tokenizer's); otherwise
        it runs to ``max_new_tokens`` unless ``stop_tokens``/``eos_token_id`` are given. Returns a ``GenerationOutput`` (``tokens`` per row, the stop token included;
        ``sequences``; ``finish_reasons``).
        """
        attention_mask = overrides.pop("attention_mask", None)
        config = make_config(
            config,
            overrides,
            where="VisualRWKV.generate",
            extra=(
                "input_ids",
                "pixel_values",
                "config",
                "state",
                "streamer",
                "generator",
                "official_rerun",
                "official_padding",
                "ctx_len",
            ),
        )
        if official_rerun:
            if state is not None or streamer is not None:
                raise ValueError("official_rerun=True starts from nothing and streams nothing: pass no state/streamer")
            explicit = {k: overrides[k] for k in ("stop_tokens", "eos_token_id") if k in overrides}
            return self.generate_official(input_ids, pixel_values, config, ctx_len=ctx_len, **explicit)
        if self.stop_at_tokenizer_stops and not ({"stop_tokens", "eos_token_id"} & set(overrides)):
            if not config.stop_tokens:
                config = replace(config, stop_tokens=self.default_stop_tokens())
        if ctx_len is not None:
            raise ValueError("ctx_len applies to official_rerun=True only (cached decoding keeps every token)")
        if official_padding and state is not None:
            raise ValueError("official_padding=True starts from nothing: pass no state")
        if official_padding is None:
            official_padding = state is None
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = None if attention_mask is None else torch.as_tensor(attention_mask)
        if isinstance(input_ids, torch.Tensor) and mask is not None and not bool(mask.bool().all()):
            # A padded batch: its rows, padding dropped, take the ragged paths (one masked call, or the per-row
            # official re-padding), which also serve rows with different numbers of images.
            padding_mask("VisualRWKV.generate", mask, *input_ids.shape)
            input_ids = [row[keep.to(row.device).bool()] for row, keep in zip(input_ids, mask)]
        if official_padding and self.pad_to_multiple:
            return self._generate_repadded(input_ids, pixel_values, config, streamer=streamer, generator=generator)
        if isinstance(input_ids, (list, tuple)):
            logits, state = self._prefill_ragged(input_ids, pixel_values, state)
            logits = logits[:, None]
        else:
            logits, state = self(input_ids, pixel_values, state, logits_to_keep=1)
        return generate(
            self,
            None,
            config,
            state=state,
            next_logits=logits[:, -1],
            streamer=streamer,
            generator=generator,
        )

    @torch.no_grad()
    def generate_official(
        self,
        input_ids: torch.Tensor,
        pixel_values: Any = None,
        config: GenerationConfig | None = None,
        *,
        ctx_len: int | None = None,
        **overrides: Any,
    ) -> GenerationOutput:
        """The official ``VisualRWKV.generate``, re-running everything (v6.0, HD/UHD and v7.00 share it).

        One prompt (``input_ids`` [1, t] or [t]), greedy only (the official code raises for sampling); without
        ``stop_tokens`` it stops at 261 ("\\n\\n", the official ``STOP_TOKEN_INDEX``) only. The
        prompt is embedded once (images included); each step then runs the whole embedded sequence as a
        fresh one (so with :attr:`pad_to_multiple` the pad count follows the current length, as the official
        re-padding does), picks the argmax of the last logits, stops after a stop token (kept in the output),
        else appends the token's embedding and, with ``ctx_len``, keeps only the last ``ctx_len`` positions
        (image positions cut off by that lose their scan order: the rest of the span reads as text).
        """
        config = make_config(config, overrides, where="VisualRWKV.generate_official", extra=())
        if self.stop_at_tokenizer_stops and not ({"stop_tokens", "eos_token_id"} & set(overrides)):
            if not config.stop_tokens:
                # The official generate stops at STOP_TOKEN_INDEX (261, "\n\n") only, not at 0.
                official = (V7_PAD_TOKEN,) if V7_PAD_TOKEN < self.rwkv.vocab_size else self.default_stop_tokens()
                config = replace(config, stop_tokens=official)
        if config.do_sample:
            raise ValueError("official generation is greedy only (the official generate raises for do_sample)")
        if ctx_len is not None and (not isinstance(ctx_len, int) or isinstance(ctx_len, bool) or ctx_len < 1):
            raise ValueError(f"ctx_len must be None or an int >= 1, got {ctx_len!r}")
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"official generation takes one prompt, input_ids [1, t]; got {got}")
        x, spans = self.embed(input_ids, pixel_values)
        row = list(spans[0]) if spans else []
        stops = set(config.stop_tokens or ())
        table = self.rwkv.emb.weight
        tokens: list[int] = []
        reason = "length"
        for _ in range(config.max_new_tokens):
            logits, _ = self.forward_embeds(x, [row] if row else None, logits_to_keep=1)
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token in stops:
                reason = "stop"
                break
            x = torch.cat([x, table[token].to(x.dtype).view(1, 1, -1)], dim=1)
            if ctx_len is not None and x.shape[1] > ctx_len:
                cut = x.shape[1] - ctx_len
                x = x[:, cut:]
                row = [replace(span, start=span.start - cut) for span in row if span.start >= cut]
        return GenerationOutput(tokens=[tokens], finish_reasons=[reason])

    @torch.no_grad()
    def _generate_repadded(self, input_ids, pixel_values, config, *, streamer=None, generator=None):
        """Cached decoding with the official per-step re-padding (see :meth:`generate`, ``official_padding``)."""
        from ..generation import decode_loop

        m = self.pad_to_multiple
        if isinstance(input_ids, torch.Tensor):
            rows = list(input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids)
        else:
            rows = [torch.as_tensor(r, dtype=torch.long) for r in input_ids]
        if isinstance(pixel_values, (list, tuple)):
            per_row = list(pixel_values)
        else:
            counts = [self.count_images(r) for r in rows]
            starts = [sum(counts[:i]) for i in range(len(rows))]
            per_row = [None if not c else _select_images(pixel_values, a, a + c) for a, c in zip(starts, counts)]
        if len(per_row) != len(rows):
            raise ValueError(f"pixel_values: {len(per_row)} image groups for {len(rows)} prompts")
        device = self.rwkv.emb.weight.device
        pad = self.rwkv.emb.weight[self.pad_token_id].view(1, 1, -1)
        lengths, first_logits, states = [], [], []
        for row, pixels in zip(rows, per_row):
            x, spans = self.embed(row.to(device).view(1, -1), pixels)
            # The state after p pads, p = 0 .. m-1 (p = 0: nothing read yet), then the prompt from each of them.
            after_pads, st = [self.rwkv.init_state(1, device=device)], None
            for _ in range(m - 1):
                _, st = self._forward_embeds7(pad.to(x.dtype), None, st, pad=False)
                after_pads.append(st)
            start = RWKVState.cat(after_pads)
            logits, st = self.forward_embeds(x.expand(m, -1, -1), spans * m, start, logits_to_keep=1)
            t = x.shape[1]
            first_logits.append(logits[(-t) % m, -1])
            lengths.append(t)
            states.append(st)
        state = [RWKVState.cat(states)]
        lengths_t = torch.tensor(lengths, device=device)
        fed = [0]
        b = len(rows)

        def step(picked: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
            ids = picked.to(device).repeat_interleave(m).view(-1, 1)
            logits, new_state = self(input_ids=ids, state=state[0])
            if not bool(running.all()):
                new_state = new_state.where(running.to(device).repeat_interleave(m), state[0])
            state[0] = new_state
            fed[0] += 1
            which = (-(lengths_t + fed[0])) % m  # the official pad count for each row's new length
            return logits[:, -1].view(b, m, -1)[torch.arange(b, device=device), which]

        tokens, reasons = decode_loop(torch.stack(first_logits), step, config, streamer=streamer, generator=generator)
        return GenerationOutput(tokens=tokens, finish_reasons=reasons, pad_token_id=config.pad_token_id)

    @torch.no_grad()
    def _prefill_ragged(
        self, rows: Sequence[Any], pixel_values: Any, state: RWKVState | None
    ) -> tuple[torch.Tensor, RWKVState]:
        """Each prompt alone -> (last logits [b, v], the rows' states joined along the batch)."""
        if not rows:
            raise ValueError("input_ids: an empty list of prompts")
        device = self.rwkv.emb.weight.device
        ids = []
        for i, row in enumerate(rows):
            row = torch.as_tensor(row, dtype=torch.long) if not isinstance(row, torch.Tensor) else row
            if row.dim() != 1 or row.numel() == 0:
                raise ValueError(f"input_ids[{i}] must be a non-empty 1-D list of ids, got shape {tuple(row.shape)}")
            ids.append(row.to(device))
        counts = [self.count_images(row) for row in ids]
        if isinstance(pixel_values, (list, tuple)):
            if len(pixel_values) != len(ids):
                raise ValueError(
                    f"pixel_values: {len(pixel_values)} image groups for {len(ids)} prompts; give one per row"
                )
            per_row = list(pixel_values)
        elif pixel_values is None or isinstance(pixel_values, (torch.Tensor, Mapping)):
            total = 0 if pixel_values is None else _image_count(pixel_values)
            if total != sum(counts):
                raise ValueError(
                    f"pixel_values holds {total} images but the prompts hold {sum(counts)} placeholders {counts}"
                )
            starts = [sum(counts[:i]) for i in range(len(ids))]
            per_row = [None if not c else _select_images(pixel_values, a, a + c) for a, c in zip(starts, counts)]
        else:
            raise TypeError(
                f"pixel_values must be a tensor, a list of tensors or None, got {type(pixel_values).__name__}"
            )
        if state is not None and state.batch_size != len(ids):
            raise ValueError(f"state has batch {state.batch_size} but there are {len(ids)} prompts")
        # One call for the whole batch: each row embedded (its images expanded) alone, then left-padded to the
        # longest and the padding masked, so every row ends at the last position with its own state.
        embedded = [self.embed(row[None], pixels) for row, pixels in zip(ids, per_row)]
        longest = max(x.shape[1] for x, _ in embedded)
        xs, spans, mask = [], [], torch.zeros(len(ids), longest, dtype=torch.bool, device=device)
        for i, (x, row_spans) in enumerate(embedded):
            pad = longest - x.shape[1]
            xs.append(torch.nn.functional.pad(x, (0, 0, pad, 0)))
            spans.append([replace(span, start=span.start + pad) for span in row_spans[0]])
            mask[i, pad:] = True
        logits, new_state = self.forward_embeds(
            torch.cat(xs), spans, state, logits_to_keep=1, attention_mask=None if bool(mask.all()) else mask
        )
        return logits[:, -1], new_state

    def default_stop_tokens(self) -> tuple[int, ...]:
        """The stop tokens :meth:`generate` uses when none are given: the ``stop_token_ids`` of the tokenizer
        the model was given or loaded with (none when it has none, or no tokenizer is set yet)."""
        return tuple(getattr(self.tokenizer, "stop_token_ids", None) or ())

    @torch.no_grad()
    def chat(
        self,
        image: Any,
        question: str | Sequence[Any],
        *,
        layout: PromptLayout | str | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 128,
        streamer=None,
        **overrides: Any,
    ) -> str:
        """Answer ``question`` about ``image`` (a PIL image, a list of them, or None for text only).

        ``question`` is a string or a conversation (see :mod:`rwkv_vision.prompt`); the layout (default:
        the model's, Sandwich for the released weights) places the image. Greedy by default; stops on the
        tokenizer's ``stop_token_ids`` if it has them, else "\\n\\n" (261) or 0; the answer is the decoded
        text up to the first "\\n\\n", stripped. This is :func:`rwkv_vision.chat.chat` with :attr:`processor`
        (``layout=`` / ``tokenizer=`` replace its parts for this call).
        """
        processor = self._processor(layout, tokenizer)
        return chat(self, processor, image, question, max_new_tokens=max_new_tokens, streamer=streamer, **overrides)
