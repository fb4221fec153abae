"""Scan policies: permutations, their inverses, and permute -> block -> unpermute around any block."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.image_tokens import ImageSpan
from rwkv_vision.scan import (
    BiDir,
    Custom,
    MultiDir,
    ScannedBlock,
    Snake,
    UniDir,
    Zigzag,
    get_scan_policy,
    normalize_spans,
    permute_spans,
    scanned_call,
    unpermute_spans,
)

SQUARE_OK = [
    UniDir(),
    BiDir(),
    MultiDir(),
    Snake(),
    Snake(bidirectional=True),
    Zigzag(),
    Zigzag(bidirectional=True),
    Zigzag(transpose=True),
]
ANY_GRID = [UniDir(), BiDir(), Snake(), Snake(bidirectional=True), Zigzag(), Zigzag(bidirectional=True)]

fast = settings(max_examples=40, deadline=None)


def causal_block(x, *args, **kwargs):
    """A block whose output depends on order: a running sum plus a per-position mix."""
    return x + 0.5 * x.cumsum(1)


# ---- permutations -------------------------------------------------------------------------------


@fast
@given(policy=st.sampled_from(SQUARE_OK), side=st.integers(1, 6), layer=st.integers(0, 11))
def test_square_permutation_and_inverse_compose_to_identity(policy, side, layer):
    perm = policy.permutation(layer, side, side)
    inv = policy.inverse(layer, side, side)
    n = side * side
    assert perm.dtype == torch.long and perm.shape == (n,)
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(perm[inv], torch.arange(n)) and torch.equal(inv[perm], torch.arange(n))


@fast
@given(policy=st.sampled_from(ANY_GRID), rows=st.integers(1, 5), cols=st.integers(1, 5), layer=st.integers(0, 7))
def test_rectangular_permutation_and_inverse(policy, rows, cols, layer):
    perm, inv = policy.permutation(layer, rows, cols), policy.inverse(layer, rows, cols)
    assert sorted(perm.tolist()) == list(range(rows * cols))
    assert torch.equal(perm[inv], torch.arange(rows * cols))


@fast
@given(side=st.integers(1, 6), layer=st.integers(0, 20))
def test_multidir_is_a_four_layer_cycle(side, layer):
    p = MultiDir()
    assert torch.equal(p.permutation(layer, side, side), p.permutation(layer + 4, side, side))
    grid = torch.arange(side * side).view(side, side)
    expected = [grid.flatten(), grid.flatten().flip(0), grid.t().flatten(), grid.t().flatten().flip(0)][layer % 4]
    assert torch.equal(p.permutation(layer, side, side), expected)


def test_bidir_flips_odd_layers_only():
    p = BiDir()
    assert p.is_identity(0, 3, 4) and p.is_identity(2, 3, 4)
    assert torch.equal(p.permutation(1, 3, 4), torch.arange(12).flip(0))
    assert torch.equal(p.permutation(7, 3, 4), torch.arange(12).flip(0))
    assert UniDir().is_identity(5, 3, 4)


def test_snake_and_zigzag_orders():
    assert Snake().permutation(0, 3, 3).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert Snake(bidirectional=True).permutation(1, 2, 3).tolist() == [3, 4, 5, 2, 1, 0]
    # 3 x 3 grid: anti-diagonals 0 | 1 3 | 6 4 2 | 5 7 | 8 (JPEG zigzag)
    assert Zigzag().permutation(0, 3, 3).tolist() == [0, 1, 3, 6, 4, 2, 5, 7, 8]
    # 2 x 3: every step moves to a neighbour sharing an edge or a corner
    assert Zigzag().permutation(0, 2, 3).tolist() == [0, 1, 3, 4, 2, 5]
    z = Zigzag(transpose=True)
    assert z.permutation(2, 3, 3).tolist() == [0, 3, 1, 2, 4, 6, 7, 5, 8]
    assert z.permutation(3, 3, 3).tolist() == [8, 5, 7, 6, 4, 2, 1, 3, 0]


def test_transposing_policies_reject_non_square_grids():
    with pytest.raises(ValueError, match="2 x 3 grid"):
        MultiDir().permutation(0, 2, 3)
    with pytest.raises(ValueError, match="2 x 3 grid"):
        Zigzag(transpose=True).permutation(1, 2, 3)
    x = torch.zeros(1, 6, 2)
    with pytest.raises(ValueError, match="2 x 3 grid"):
        permute_spans(x, [ImageSpan(0, 2, 3, cls=None)], MultiDir(), 2)


def test_custom_cycles_and_validates():
    c = Custom([[2, 0, 1, 3], None, torch.tensor([3, 2, 1, 0])])
    assert c.permutation(0, 2, 2).tolist() == [2, 0, 1, 3]
    assert c.is_identity(1, 2, 2)
    assert c.permutation(5, 2, 2).tolist() == [3, 2, 1, 0]
    assert c.permutation(3, 2, 2).tolist() == [2, 0, 1, 3]
    with pytest.raises(ValueError, match=r"permutations\[0\].*length 4.*3 x 3 grid has 9"):
        c.permutation(0, 3, 3)
    with pytest.raises(ValueError, match=r"permutations\[1\].*not a permutation"):
        Custom([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="at least one"):
        Custom([])
    assert Custom([[1, 0]]) == Custom([(1, 0)]) and hash(Custom([[1, 0]])) == hash(Custom([(1, 0)]))


def test_policy_names_and_bad_arguments():
    assert get_scan_policy("BiDir") == BiDir() and get_scan_policy(None) == UniDir()
    with pytest.raises(ValueError, match="scan policy"):
        get_scan_policy("diagonal")
    with pytest.raises(ValueError, match="layer_index"):
        BiDir().permutation(-1, 2, 2)
    with pytest.raises(ValueError, match="rows"):
        BiDir().permutation(0, 0, 2)


# ---- applying to sequences ----------------------------------------------------------------------


@st.composite
def sequences_with_spans(draw):
    """A sequence length and a non-overlapping set of image spans (random grid, CLS placement)."""
    spans, pos = [], draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 3))):
        side = draw(st.integers(1, 4))
        span = ImageSpan(pos, side, side, draw(st.sampled_from(["last", "first", None])))
        spans.append(span)
        pos = span.stop + draw(st.integers(0, 3))
    return pos + draw(st.integers(0, 2)), spans


@fast
@given(data=sequences_with_spans(), policy=st.sampled_from(SQUARE_OK), layer=st.integers(0, 7))
def test_only_patch_tokens_move_and_unpermute_restores(data, policy, layer):
    t, spans = data
    x = torch.arange(t, dtype=torch.float64).view(1, t, 1).expand(2, t, 3).contiguous()
    y = permute_spans(x, spans, policy, layer)
    patch = torch.zeros(t, dtype=torch.bool)
    for s in spans:
        patch[s.patch_start : s.patch_stop] = True
        assert sorted(y[0, s.patch_start : s.patch_stop, 0].tolist()) == list(range(s.patch_start, s.patch_stop))
        expected = s.patch_start + policy.permutation(layer, s.rows, s.cols)
        assert torch.equal(y[0, s.patch_start : s.patch_stop, 0], expected.double())
    assert torch.equal(y[:, ~patch], x[:, ~patch])  # text and CLS stay put
    assert torch.equal(unpermute_spans(y, spans, policy, layer), x)


def test_identity_layers_do_not_copy():
    x = torch.randn(2, 9, 4)
    spans = [ImageSpan(2, 2, 2)]
    assert permute_spans(x, spans, BiDir(), 0) is x
    assert permute_spans(x, None, MultiDir(), 1) is x


def test_per_row_spans_at_different_positions():
    x = torch.randn(3, 12, 5)
    rows = [[ImageSpan(0, 2, 2)], [ImageSpan(3, 2, 2, cls="first"), ImageSpan(9, 1, 2, cls=None)], []]
    y = permute_spans(x, rows, BiDir(), 1)
    for r in range(3):
        alone = permute_spans(x[r : r + 1], rows[r], BiDir(), 1)
        assert torch.equal(y[r : r + 1], alone)
    assert torch.equal(y[2], x[2])
    assert torch.equal(y[0, :4], x[0, :4].flip(0)) and torch.equal(y[0, 4], x[0, 4])  # CLS last stays
    assert torch.equal(y[1, 3], x[1, 3]) and torch.equal(y[1, 4:8], x[1, 4:8].flip(0))  # CLS first stays
    assert torch.equal(unpermute_spans(y, rows, BiDir(), 1), x)


def test_span_validation_errors():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match="overlap"):
        permute_spans(x, [ImageSpan(0, 2, 2), ImageSpan(3, 1, 1)], BiDir(), 1)
    with pytest.raises(ValueError, match="2 per-row span lists for a batch of 3"):
        normalize_spans([[], []], 3)
    with pytest.raises(ValueError, match=r"x must be a \[b, t, c\]"):
        permute_spans(torch.randn(10, 3), [], BiDir(), 1)
    with pytest.raises(ValueError, match="cut by the chunk"):
        permute_spans(x, [ImageSpan(8, 2, 2)], BiDir(), 1)
    with pytest.raises(ValueError, match="ImageSpan.start"):
        ImageSpan(-1, 2, 2)


def test_chunk_offset_skips_spans_outside_and_shifts_inside():
    x = torch.randn(1, 6, 2)
    spans = [ImageSpan(1, 2, 2, cls=None), ImageSpan(20, 2, 2)]
    y = permute_spans(x, spans, BiDir(), 1, offset=0)
    chunk = torch.cat([torch.randn(1, 10, 2), x], 1)
    y2 = permute_spans(chunk[:, 10:], [s.shifted(10) for s in spans], BiDir(), 1, offset=10)
    assert torch.equal(y, y2)


# ---- around blocks ------------------------------------------------------------------------------


def official_bidir_layer(x, span: ImageSpan, layer, block):
    """What the v6.0 code does at one layer: flip the patch span on odd layers, run, flip back."""
    x = x.clone()
    s, e = span.patch_start, span.patch_stop
    if layer % 2 == 1:
        x[:, s:e] = x[:, s:e].flip(1)
    x = block(x)
    if layer % 2 == 1:
        x[:, s:e] = x[:, s:e].flip(1)
    return x


def multidir_reference_layer(x, span: ImageSpan, layer, block):
    side = span.rows
    x = x.clone()
    s, e = span.patch_start, span.patch_stop

    def order(p):
        if layer % 4 >= 2:
            p = p.reshape(p.shape[0], side, side, -1).transpose(1, 2).reshape(p.shape)
        return p.flip(1) if layer % 2 == 1 else p

    def unorder(p):
        p = p.flip(1) if layer % 2 == 1 else p
        if layer % 4 >= 2:
            p = p.reshape(p.shape[0], side, side, -1).transpose(1, 2).reshape(p.shape)
        return p

    x[:, s:e] = order(x[:, s:e])
    x = block(x)
    x[:, s:e] = unorder(x[:, s:e])
    return x


@pytest.mark.parametrize("policy,reference", [(BiDir(), official_bidir_layer), (MultiDir(), multidir_reference_layer)])
def test_scanned_stack_matches_reference(policy, reference):
    x = torch.randn(2, 3 + 10 + 4, 6, dtype=torch.float64)
    span = ImageSpan(3, 3, 3)  # 9 patches then CLS at 12
    ours, ref = x, x
    for layer in range(6):
        ours = scanned_call(causal_block, ours, policy=policy, layer_index=layer, spans=[span])
        ref = reference(ref, span, layer, causal_block)
    err = ((ours - ref).pow(2).mean() / ref.pow(2).mean()).sqrt()
    assert err < 1e-12


def test_wrapper_passes_extra_args_and_tuple_outputs():
    calls = []

    def block(x, state, *, scale):
        calls.append(x.clone())
        return x * scale, state + 1, "aux"

    x = torch.randn(1, 7, 2)
    spans = [ImageSpan(1, 2, 2)]
    wrapped = ScannedBlock(block, BiDir(), 1)
    y, state, aux = wrapped(x, 10, spans=spans, scale=2.0)
    assert state == 11 and aux == "aux"
    assert torch.equal(calls[0][0, 1:5], x[0, 1:5].flip(0))  # the block saw the flipped span
    assert torch.equal(y, x * 2.0)  # and its output came back in place
    wrapped.policy = UniDir()  # swapping the policy is an attribute assignment
    wrapped(x, 0, spans=spans, scale=1.0)
    assert torch.equal(calls[1], x)
    assert torch.equal(wrapped(x, 0, scale=3.0)[0], x * 3.0)  # no spans: a plain call
    assert "BiDir" not in repr(wrapped) and "UniDir" in repr(wrapped)


def test_wrapper_wraps_modules_and_rejects_bad_returns():
    lin = torch.nn.Linear(3, 3)
    wrapped = ScannedBlock(lin, MultiDir(), 2)
    assert any(p is lin.weight for p in wrapped.parameters())
    x = torch.randn(1, 4, 3)
    # A position-wise block commutes with any permutation.
    assert torch.allclose(wrapped(x, spans=[ImageSpan(0, 2, 2, cls=None)]), lin(x))
    with pytest.raises(TypeError, match="must return"):
        scanned_call(lambda x: "oops", x, policy=BiDir(), layer_index=1, spans=[ImageSpan(0, 2, 2, cls=None)])
    with pytest.raises(TypeError, match="callable"):
        ScannedBlock(3, BiDir(), 0)
