"""rwkv_vision: linear-RNN (RWKV-6) multimodal building blocks for visual language models.

The path of data, module by module (each imports only what comes before it):

    pixels --vision.ImagePreprocessor--> vision encoder (timm) --layers.projector--> image embeddings
    text --tokenizer--> prompt layout (image first / last / sandwich) --> ids with image placeholders
    --> models.RWKV6 blocks (layers.*), each wrapped by a scan policy (scan.py) --> logits
    --> generation (prefill with scans, then O(1)-per-token decode from the cached state.py)

``models.VisualRWKV`` puts these together; ``hub`` loads and saves it. The recurrence itself is
``ops.wkv6`` (C++/CUDA kernels with a pure-PyTorch twin).
"""

from . import ops
from .ops import wkv6, wkv6_ref

# Vision side: preprocessing, encoders, projectors.
from . import vision
from .vision import ImagePreprocessor, VisionEncoder
from .layers.projector import GatedMLPProjector, LinearProjector, MLPProjector, create_projector

# Text side and the sequence: tokenizer, prompt layouts, scan policies.
from .tokenizer import WorldTokenizer
from . import prompt, scan
from .prompt import IMAGE_TOKEN_INDEX, ImageFirst, ImageLast, Sandwich
from .scan import BiDir, Custom, ImageSpan, MultiDir, ScannedBlock, Snake, UniDir, Zigzag

# The language model, its state, generation, and the VLM.
from .state import RWKVState
from .models import RWKV6, create_model
from .generation import GenerationConfig, generate
from .models.visualrwkv import VisualRWKV

__version__ = "0.1.0"

__all__ = [
    "ops", "wkv6", "wkv6_ref",
    "vision", "ImagePreprocessor", "VisionEncoder",
    "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector",
    "WorldTokenizer",
    "prompt", "IMAGE_TOKEN_INDEX", "ImageFirst", "ImageLast", "Sandwich",
    "scan", "UniDir", "BiDir", "MultiDir", "Snake", "Zigzag", "Custom", "ImageSpan", "ScannedBlock",
    "RWKVState", "RWKV6", "create_model", "GenerationConfig", "generate",
    "VisualRWKV",
    "__version__",
]
