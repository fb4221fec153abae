"""VisualRWKV: vision encoder + projector + prompt layout + scan policy + RWKV-6.

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
from ..scan import BiDir, MultiDir, ScanPolicy, UniDir, get_scan_policy, scanned_call
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
from .config import VisualRWKVConfig
from .output import (
    IGNORE_INDEX,
    ModelOutput,
    mask_padded_labels,
    next_token_loss,
    padding_mask,
    reject_unknown_keywords,
)
from .rwkv6 import RWKV6

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


def _simplicity(policy: ScanPolicy) -> tuple[int, int]:
    return (policy.period, 0 if type(policy) in (UniDir, BiDir, MultiDir) else 1)


class VisualRWKV(nn.Module):
    """A visual language model: ``encoder`` -> ``proj`` -> (text + image embeddings) -> scanned ``rwkv``.

    Args (keyword only):
        rwkv: the language model (:class:`RWKV6`).
        encoder: a :class:`~rwkv_vision.vision.VisionEncoder` (its grid and CLS position define the image
            spans).
        proj: maps ``[.., w] -> [.., c]``; default ``LinearProjector(w, c)`` (v6.0).
        scan: a :class:`~rwkv_vision.scan.ScanPolicy` (default :class:`BiDir`, the released weights).
        layout: a :class:`~rwkv_vision.prompt.PromptLayout` for :meth:`chat` (default :class:`Sandwich`);
            its grid is set from the encoder.
        tokenizer: anything with ``encode``/``decode``, used by :meth:`chat` (default: the World tokenizer,
            created on first use).
        preprocessor: PIL -> pixel_values for :meth:`chat` (default: CLIP preprocessing at the encoder's size).
        freeze_encoder: turn off gradients of the encoder (VisualRWKV keeps CLIP frozen).
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
    ):
        super().__init__()
        if not isinstance(rwkv, RWKV6):
            raise TypeError(f"rwkv must be an RWKV6, got {type(rwkv).__name__}")
        if not isinstance(encoder, VisionEncoder):
            raise TypeError(f"encoder must be a VisionEncoder, got {type(encoder).__name__}")
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
        )

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
        rwkv = RWKV6(config.rwkv, device=device, dtype=dtype)
        encoder = encoder_from_config(config.encoder, device=device, dtype=dtype)
        proj = projector_from_config(config.projector, device=device, dtype=dtype)
        kwargs.setdefault("freeze_encoder", bool(config.encoder.get("frozen", True)))
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
        """Build from a released flat checkpoint (``rwkv.*``, ``vit.vision_model.*``, ``proj.weight``); see
        :func:`rwkv_vision.checkpoint.official.visualrwkv_from_official_state_dict`."""
        from ..checkpoint.official import visualrwkv_from_official_state_dict

        return visualrwkv_from_official_state_dict(state_dict, cls=cls, **kwargs)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under the released checkpoint's names (``rwkv.*``, ``vit.vision_model.*``,
        ``proj.weight``); only for the v6.0 linear projector."""
        from ..checkpoint.official import visualrwkv_official_state_dict

        return visualrwkv_official_state_dict(self)

    # --- the model ---------------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, H, W] -> image embeddings [n, k, c] in the LM's dtype."""
        feats = self.encoder(pixel_values)
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
            if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
                got = (
                    tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
                )
                raise ValueError(f"pixel_values must be [n, 3, H, W] (one image per placeholder), got {got}")
            if pixel_values.shape[0] != n:
                raise ValueError(
                    f"input_ids hold {n} image placeholders (IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX}) but "
                    f"pixel_values has {pixel_values.shape[0]} images"
                )
            if n and not bool(torch.isfinite(pixel_values).all()):
                raise ValueError("pixel_values must be finite: it holds NaN or infinite values")
            image_embeds = self.encode_images(pixel_values) if n else []
        return expand_image_embeddings(
            input_ids, image_embeds, self.rwkv.embed, grids=self.encoder.grid, cls=self.encoder.cls
        )

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
        (offsets over the expanded sequence; state of N rows)."""
        if x.dim() != 3 or x.shape[-1] != self.rwkv.n_embd:
            raise ValueError(f"x must be [b, T, c = {self.rwkv.n_embd}], got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("the sequence is empty (T = 0)")
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
            input_ids: [b, t] ids with :data:`IMAGE_TOKEN_INDEX` once per image.
            pixel_values: [n, 3, H, W], one image per placeholder in order (row 0 first); None for text.
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
        **overrides: Any,
    ) -> GenerationOutput:
        """Prefill the prompt (images and scans included) once, then decode from the cached state.

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
            extra=("input_ids", "pixel_values", "config", "state", "streamer", "generator"),
        )
        if self.stop_at_tokenizer_stops and not ({"stop_tokens", "eos_token_id"} & set(overrides)):
            if not config.stop_tokens:
                config = replace(config, stop_tokens=self.default_stop_tokens())
        if isinstance(input_ids, (list, tuple)):
            logits, state = self._prefill_ragged(input_ids, pixel_values, state)
            logits = logits[:, None]
        else:
            if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            mask = None if attention_mask is None else torch.as_tensor(attention_mask)
            if mask is not None and not bool(mask.bool().all()):
                # A padded batch: its rows, padding dropped, take the ragged path (one masked call), which also
                # serves rows with different numbers of images.
                padding_mask("VisualRWKV.generate", mask, *input_ids.shape)
                rows = [row[keep.to(row.device).bool()] for row, keep in zip(input_ids, mask)]
                logits, state = self._prefill_ragged(rows, pixel_values, state)
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
        counts = [int((row == IMAGE_TOKEN_INDEX).sum()) for row in ids]
        if isinstance(pixel_values, (list, tuple)):
            if len(pixel_values) != len(ids):
                raise ValueError(
                    f"pixel_values: {len(pixel_values)} image groups for {len(ids)} prompts; give one per row"
                )
            per_row = list(pixel_values)
        elif pixel_values is None or isinstance(pixel_values, torch.Tensor):
            total = 0 if pixel_values is None else pixel_values.shape[0]
            if total != sum(counts):
                raise ValueError(
                    f"pixel_values holds {total} images but the prompts hold {sum(counts)} placeholders {counts}"
                )
            starts = [sum(counts[:i]) for i in range(len(ids))]
            per_row = [None if not c else pixel_values[a : a + c] for a, c in zip(starts, counts)]
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
