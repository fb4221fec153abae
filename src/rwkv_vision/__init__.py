"""rwkv_vision: linear-RNN (RWKV-6, RWKV-7) multimodal building blocks for visual language models.

The path of data, module by module (each imports only what comes before it):

    pixels --vision.ImagePreprocessor--> vision encoder (timm) --vision.projector--> image embeddings
    text --tokenizers--> prompt layout (image first / last / sandwich) --> ids with image placeholders
         (image_tokens: the placeholder id, and the span of each image's tokens)
    --> models.RWKV6 or models.RWKV7 blocks (layers.*), each wrapped by a scan policy (scan.py) --> logits
    --> generation (prefill with scans, then O(1)-per-token decode from the cached state.py)

``models.VisualRWKV`` puts these together; ``processor.VisualRWKVProcessor`` turns images and text into its
inputs, ``chat.chat`` answers a question with both, and ``checkpoint`` loads and saves it. Named components (scan
policies, layouts, projectors, encoders, tokenizers) are listed in their ``registry.Registry``. The
recurrences themselves are ``ops.wkv6`` and ``ops.wkv7`` (C++/CUDA kernels with pure-PyTorch twins).
"""

# Vision side: preprocessing, encoders, projectors.
# Text side and the sequence: tokenizers, image tokens, prompt layouts, scan policies.
from . import ops, prompt, scan, tokenizers, vision
from .chat import chat
from .generation import GenerationConfig, GenerationOutput, generate
from .image_tokens import IMAGE_TOKEN_INDEX, ImageSpan
from .models import RWKV6, RWKV7, ModelOutput, create_model
from .models.visualrwkv import VisualRWKV
from .ops import wkv6, wkv6_ref, wkv7, wkv7_ref
from .processor import VisualRWKVProcessor
from .prompt import ImageFirst, ImageLast, Sandwich
from .registry import Registry
from .scan import BiDir, Custom, MultiDir, ScannedBlock, Snake, UniDir, Zigzag

# The language model, its state, generation, and the VLM.
from .state import RWKVState
from .tokenizers import Tokenizer, WordTokenizer, WorldTokenizer
from .vision import ImagePreprocessor, VisionEncoder
from .vision.projector import GatedMLPProjector, LinearProjector, MLPProjector, create_projector

__version__ = "0.1.0"

__all__ = [
    "ops",
    "wkv6",
    "wkv6_ref",
    "wkv7",
    "wkv7_ref",
    "vision",
    "ImagePreprocessor",
    "VisionEncoder",
    "LinearProjector",
    "MLPProjector",
    "GatedMLPProjector",
    "create_projector",
    "tokenizers",
    "Tokenizer",
    "WorldTokenizer",
    "WordTokenizer",
    "IMAGE_TOKEN_INDEX",
    "ImageSpan",
    "prompt",
    "ImageFirst",
    "ImageLast",
    "Sandwich",
    "scan",
    "UniDir",
    "BiDir",
    "MultiDir",
    "Snake",
    "Zigzag",
    "Custom",
    "ScannedBlock",
    "Registry",
    "RWKVState",
    "RWKV6",
    "RWKV7",
    "create_model",
    "ModelOutput",
    "GenerationConfig",
    "GenerationOutput",
    "generate",
    "VisualRWKV",
    "VisualRWKVProcessor",
    "chat",
    "__version__",
]
