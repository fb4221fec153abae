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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..chat import chat
from ..generation import GenerationConfig, GenerationOutput, generate
from ..image_tokens import IMAGE_TOKEN_INDEX, ImageSpan
from ..processor import VisualRWKVProcessor
from ..prompt import PromptLayout, Sandwich, expand_image_embeddings, get_layout
from ..scan import BiDir, ScanPolicy, get_scan_policy, scanned_call
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
from .rwkv6 import RWKV6

__all__ = ["VisualRWKV"]


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
        self.scan = BiDir() if scan is None else scan
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
        """Load a model: a :meth:`save_pretrained` directory, a released ``.pth``, a ``.safetensors`` file with
        the released key names, or a Hugging Face Hub repo id (with ``filename`` for a single file, e.g.
        ``VisualRWKV.from_pretrained("howard-hou/visualrwkv-6", "VisualRWKV-v060-1B6-v1.0-20240612.pth")``).

        ``dtype``/``device`` cast after reading (default: the file's dtype, on the CPU). Keyword options:
        ``cache_dir``, ``progress`` (progress bar; default only for files >= 256 MiB), and ``scan``,
        ``layout``, ``tokenizer``, ``preprocessor``, ``freeze_encoder`` replacing the checkpoint's. Returns
        the model in eval mode. See :func:`rwkv_vision.checkpoint.from_pretrained`.
        """
        from ..checkpoint.pretrained import from_pretrained

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
        input_ids = input_ids.to(self.rwkv.emb.weight.device)
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
    ) -> tuple[torch.Tensor, RWKVState]:
        """The scanned language model on embeddings: x [b, T, c] -> (logits [b, T, v] (or the last
        ``logits_to_keep``), state). Each block sees its layer's patch order (``self.scan``)."""
        if x.dim() != 3 or x.shape[-1] != self.rwkv.n_embd:
            raise ValueError(f"x must be [b, T, c = {self.rwkv.n_embd}], got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("the sequence is empty (T = 0)")
        self.rwkv._check_state(state, x.shape[0])
        spans = spans if spans and any(spans) else None
        layers = []
        for i, block in enumerate(self.rwkv.blocks):
            layer_state = None if state is None else state[i]
            if spans is None:
                x, layer_state = block(x, layer_state, return_state=True)
            else:
                x, layer_state = scanned_call(
                    block, x, layer_state, policy=self.scan, layer_index=i, spans=spans, return_state=True
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
    ) -> tuple[torch.Tensor, RWKVState]:
        """Logits over the expanded sequence.

        Args:
            input_ids: [b, t] ids with :data:`IMAGE_TOKEN_INDEX` once per image.
            pixel_values: [n, 3, H, W], one image per placeholder in order (row 0 first); None for text.
            state: the state after earlier tokens (None: a fresh sequence). Images must lie wholly in one call.
            image_embeds: instead of pixel_values, projected image embeddings [n, k, c].
            logits_to_keep: 0 for every position, k > 0 for the last k.
        Returns:
            (logits [b, T, v], RWKVState) with T = t + n_row * (k - 1).
        """
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        x, spans = self.embed(input_ids, pixel_values, image_embeds=image_embeds)
        return self.forward_embeds(x, spans, state, logits_to_keep=logits_to_keep)

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

        input_ids [b, t] with placeholders; pixel_values [n, 3, H, W]. ``config``/``overrides`` as in
        :func:`rwkv_vision.generation.generate` (e.g. ``max_new_tokens=32, stop_tokens=CHAT_STOP_TOKENS``).
        Returns a ``GenerationOutput`` (tokens per row, the stop token included).
        """
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        logits, state = self(input_ids, pixel_values, state, logits_to_keep=1)
        return generate(
            self,
            None,
            config,
            state=state,
            next_logits=logits[:, -1],
            streamer=streamer,
            generator=generator,
            **overrides,
        )

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
