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
