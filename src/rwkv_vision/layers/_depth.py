"""Where a layer sits in the stack, as the two ratios RWKV's initialisation is written in."""

from __future__ import annotations

__all__ = ["depth_ratios"]


def depth_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """(ratio_0_to_1, ratio_1_to_almost_0): 0 -> 1 from the first to the last layer, and 1 -> 1/n_layer."""
    if not 0 <= layer_id < n_layer:
        raise ValueError(f"layer_id must be in [0, n_layer) = [0, {n_layer}), got {layer_id}")
    return layer_id / max(n_layer - 1, 1), 1.0 - layer_id / n_layer
