"""Vision side of the data path: ``ImagePreprocessor`` (PIL -> pixel_values), timm encoders with feature
selection (``VisionEncoder``), the multi-tower stack of VisualRWKV v7.00 (``MultiEncoder`` of ``ViTTower`` /
``SamTower``, ``MultiImagePreprocessor``, the ``vit.*_featurizer`` key converter), VisualRWKV-UHD's whole image +
tiles (``TiledEncoder``, ``TilePreprocessor``, ``ReLUProjector``), projectors into the language model's width, and the Hugging Face CLIP <-> timm
weight converter."""

from .convert_clip import (
    clip_config_from_state_dict,
    clip_to_timm_state_dict,
    encoder_from_clip_state_dict,
    find_clip_prefix,
    load_clip_state_dict,
    timm_to_clip_state_dict,
)
from .convert_v7 import (
    V7_VISION_PREFIX,
    encoder_to_v7_state_dict,
    load_v7_vision_state_dict,
    sam_to_timm_state_dict,
    timm_to_sam_state_dict,
    v7_to_encoder_state_dict,
)
from .encoders import (
    ENCODERS,
    VisionEncoder,
    clip_vit_l14_336,
    create_encoder,
    list_encoders,
    register_encoder,
    timm_vit,
    tiny_clip,
)
from .multi_encoder import V7_TOWERS, MultiEncoder, tiny_visualrwkv7_encoder, visualrwkv7_encoder
from .multi_preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    MultiImagePreprocessor,
    SquareResize,
    visualrwkv7_preprocessor,
)
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor, to_rgb
from .projector import (
    PROJECTORS,
    ContextGatingProjector,
    GatedMLPProjector,
    LinearProjector,
    MLPProjector,
    Projector,
    create_projector,
)
from .relu_projector import ReLUProjector
from .spatial import pool_grid, space_to_depth
from .tile_preprocess import TilePreprocessor, split_into_tiles
from .tiles import TiledEncoder, tiny_visualrwkv_uhd_encoder, visualrwkv_uhd_encoder
from .towers import SamTower, ViTTower, timm_tower

__all__ = [
    "ImagePreprocessor",
    "to_rgb",
    "CLIP_MEAN",
    "CLIP_STD",
    "VisionEncoder",
    "timm_vit",
    "clip_vit_l14_336",
    "tiny_clip",
    "create_encoder",
    "register_encoder",
    "list_encoders",
    "ENCODERS",
    "Projector",
    "LinearProjector",
    "MLPProjector",
    "GatedMLPProjector",
    "ContextGatingProjector",
    "create_projector",
    "PROJECTORS",
    "find_clip_prefix",
    "clip_config_from_state_dict",
    "clip_to_timm_state_dict",
    "timm_to_clip_state_dict",
    "load_clip_state_dict",
    "encoder_from_clip_state_dict",
    "ViTTower",
    "SamTower",
    "timm_tower",
    "space_to_depth",
    "pool_grid",
    "MultiEncoder",
    "V7_TOWERS",
    "visualrwkv7_encoder",
    "tiny_visualrwkv7_encoder",
    "V7_VISION_PREFIX",
    "v7_to_encoder_state_dict",
    "encoder_to_v7_state_dict",
    "load_v7_vision_state_dict",
    "sam_to_timm_state_dict",
    "timm_to_sam_state_dict",
    "SquareResize",
    "MultiImagePreprocessor",
    "visualrwkv7_preprocessor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "TiledEncoder",
    "visualrwkv_uhd_encoder",
    "tiny_visualrwkv_uhd_encoder",
    "TilePreprocessor",
    "split_into_tiles",
    "ReLUProjector",
]
