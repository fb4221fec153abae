"""rwkv_vision: linear-RNN (RWKV-6) multimodal building blocks for visual language models.

The path of data, module by module:
pixels -> ``vision`` (preprocess, timm encoder) -> ``layers.projector`` -> ``prompt`` (layouts, image spans)
-> ``models.rwkv6`` blocks wrapped by ``layers.scan`` policies -> logits -> ``generation``.
The recurrence itself is ``ops.wkv6`` (C++/CUDA kernels with a pure-PyTorch twin).
"""

from . import ops
from .ops import wkv6, wkv6_ref

__version__ = "0.1.0"

__all__ = ["ops", "wkv6", "wkv6_ref", "__version__"]

# The RWKV-6 language model, its state, generation and tokenizer.
from .generation import GenerationConfig, generate  # noqa: E402
from .models import RWKV6, create_model  # noqa: E402
from .state import RWKVState  # noqa: E402
from .tokenizer import WorldTokenizer  # noqa: E402

__all__ += ["RWKV6", "RWKVState", "create_model", "generate", "GenerationConfig", "WorldTokenizer"]

# The multimodal side: scan policies, prompt layouts, projectors, vision encoders and preprocessing.
from . import prompt, scan, vision  # noqa: E402
from .layers.projector import GatedMLPProjector, LinearProjector, MLPProjector, create_projector  # noqa: E402
from .prompt import IMAGE_TOKEN_INDEX, ImageFirst, ImageLast, Sandwich  # noqa: E402
from .scan import BiDir, Custom, ImageSpan, MultiDir, ScannedBlock, Snake, UniDir, Zigzag  # noqa: E402
from .vision import ImagePreprocessor, VisionEncoder  # noqa: E402
from .models.visualrwkv import VisualRWKV  # noqa: E402

__all__ += [
    "scan", "prompt", "vision", "IMAGE_TOKEN_INDEX", "ImageFirst", "ImageLast", "Sandwich",
    "UniDir", "BiDir", "MultiDir", "Snake", "Zigzag", "Custom", "ImageSpan", "ScannedBlock",
    "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector", "ImagePreprocessor", "VisionEncoder",
    "VisualRWKV",
]
