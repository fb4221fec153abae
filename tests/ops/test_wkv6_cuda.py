"""wkv6 on the CUDA kernel: the CPU suite's comparisons, on a GPU. Run with `pytest -m cuda`."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.ops import CUDA_HEAD_SIZES, backend_info, wkv6

from .wkv6_cases import NAMES, assert_matches_reference, in_two_segments, make_inputs, rel_rms, run_with_grads

pytestmark = pytest.mark.cuda


def cuda_wkv6(*args, **kw):
    return wkv6(*args, backend="kernel", **kw)


def variant(backend, **options):
    """wkv6 on one CUDA kernel variant, with run_with_grads' signature."""
    return lambda *args, **kw: wkv6(*args, backend=backend, **options, **kw)


def built(backend):
    """Skip unless this build has the CUDA variant (the experimental ones need a build option)."""
    return pytest.mark.skipif(
        backend not in backend_info()["cuda_variants"],
        reason=f"{backend} is an experimental CUDA kernel, not in this build "
        "(build with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON to test it)",
    )


needs_split, needs_chunked = built("cuda_split"), built("cuda_chunked")


def test_cuda_kernels_are_built_and_visible():
    info = backend_info()
    assert info["cuda_kernels"] and info["cuda_available"], info
    assert "cuda_recurrent" in info["cuda_variants"], info


def test_kernel_is_the_recurrent_variant():
    inputs = make_inputs(2, 40, 3, 64, device="cuda", seed=13)
    y_k, s_k, g_k = run_with_grads(cuda_wkv6, inputs)
    y_r, s_r, g_r = run_with_grads(variant("cuda_recurrent"), inputs)
    assert torch.equal(y_k, y_r) and torch.equal(s_k, s_r)
    assert all(torch.equal(g_k[k], g_r[k]) for k in g_r)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t", (1, 2, 7, 63, 64, 65, 257))
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_float32_matches_float64_reference(n, t, with_state):
    inputs = make_inputs(2, t, 2, n, device="cuda", with_state=with_state, seed=t + n)
    assert_matches_reference(cuda_wkv6, inputs, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", (1, 65, 257, 1000))
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_half_precision_matches_float64_reference(n, t, dtype):
    inputs = make_inputs(2, t, 3, n, dtype=dtype, device="cuda", seed=t)
    assert_matches_reference(cuda_wkv6, inputs, 5e-3)


def test_output_only_loss_and_many_heads():
    inputs = make_inputs(3, 50, 17, 64, device="cuda", seed=2)
    assert_matches_reference(cuda_wkv6, inputs, 1e-5, state_loss=False)


def test_cpu_and_cuda_kernels_agree():
    inputs = make_inputs(2, 129, 2, 64, seed=3)
    y_c, s_c, g_c = run_with_grads(cuda_wkv6, {k: x.cuda() for k, x in inputs.items()})
    y_h, s_h, g_h = run_with_grads(cuda_wkv6, inputs)
    assert rel_rms(y_c, y_h) < 1e-5 and rel_rms(s_c, s_h) < 1e-5
    for k in g_h:
        assert rel_rms(g_c[k], g_h[k]) < 1e-5, k


@pytest.mark.parametrize("split", [1, 64, 99])
def test_segments_with_carried_state_equal_one_run(split):
    inputs = make_inputs(2, 100, 2, 64, device="cuda", seed=split)
    y_full, s_full, g_full = run_with_grads(cuda_wkv6, inputs)

    y_seg, s_seg, g_seg = run_with_grads(in_two_segments(cuda_wkv6, split), inputs)
    assert rel_rms(y_seg, y_full) < 1e-5 and rel_rms(s_seg, s_full) < 1e-5
    for k in g_full:
        assert rel_rms(g_seg[k], g_full[k]) < 1e-5, k


def test_non_contiguous_inputs():
    inputs = make_inputs(2, 9, 3, 32, device="cuda", seed=8)
    strided = {k: (x.transpose(1, 2).contiguous().transpose(1, 2) if k in "rkvw" else x) for k, x in inputs.items()}
    assert_matches_reference(cuda_wkv6, strided, 1e-5)


def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 33, 2, 64, device="cuda", seed=7)
    compiled = torch.compile(lambda *a: cuda_wkv6(*a, output_final_state=True), fullgraph=True)
    y, s = compiled(*[inputs[k] for k in NAMES])
    y_e, s_e = cuda_wkv6(*[inputs[k] for k in NAMES], output_final_state=True)
    assert rel_rms(y, y_e) < 1e-6 and rel_rms(s, s_e) < 1e-6


def assert_graph_replay_equals_eager(inputs, run=cuda_wkv6):
    """The kernels run on torch's current stream, so a side stream's CUDA graph captures them."""
    args = [inputs[k] for k in NAMES]
    expected, _ = run(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(*args)  # warm-up outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y, _ = run(*args)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_rms(y, expected) < 1e-6


def test_runs_on_the_current_stream_and_in_a_cuda_graph():
    assert_graph_replay_equals_eager(make_inputs(1, 16, 2, 64, device="cuda", seed=9))


def test_unsupported_head_size_falls_back_or_says_why():
    inputs = make_inputs(1, 4, 2, 48, device="cuda")
    args = [inputs[k] for k in NAMES]
    y, _ = wkv6(*args)  # auto: the reference takes over
    assert y.shape == (1, 4, 2, 48)
    with pytest.raises(ValueError, match="head sizes"):
        wkv6(*args, backend="kernel")


def test_float64_on_cuda_falls_back_or_says_why():
    inputs = make_inputs(1, 4, 2, 64, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="float64"):
        wkv6(*[inputs[k] for k in NAMES], backend="kernel")


# The experimental variants, chosen by backend=: "cuda_split" (csrc/cuda/wkv6_forward_split.cu, four
# threads per state column, float32 arithmetic like the default; the recurrent backward) and "cuda_chunked"
# (csrc/cuda/wkv6_chunked_cuda.cu, 16-step chunks on TF32 tensor cores, so about 1e-3 relative error even
# for float32 inputs; its own backward). Each skips where the build does not include it.
FLOAT32_TOL = {"cuda_split": 1e-5, "cuda_chunked": 2e-3}
EXPERIMENTAL = [pytest.param("cuda_split", marks=needs_split), pytest.param("cuda_chunked", marks=needs_chunked)]


@pytest.mark.parametrize("kernel", EXPERIMENTAL)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t", (1, 2, 7, 15, 16, 17, 65, 257))
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_forward_kernel_matches_float64_reference(kernel, n, t, with_state):
    inputs = make_inputs(2, t, 3, n, device="cuda", with_state=with_state, seed=t + n)
    assert_matches_reference(variant(kernel), inputs, FLOAT32_TOL[kernel])


@pytest.mark.parametrize("kernel", EXPERIMENTAL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_forward_kernel_half_precision(kernel, n, dtype):
    assert_matches_reference(variant(kernel), make_inputs(2, 300, 5, n, dtype=dtype, device="cuda", seed=n), 5e-3)


@pytest.mark.parametrize("kernel", EXPERIMENTAL)
def test_forward_kernels_agree_with_the_default(kernel):
    inputs = make_inputs(3, 513, 7, 64, dtype=torch.bfloat16, device="cuda", seed=11)
    args = [inputs[k] for k in NAMES]
    y_default, s_default = cuda_wkv6(*args, output_final_state=True)
    y_other, s_other = variant(kernel)(*args, output_final_state=True)
    assert rel_rms(y_other, y_default) < 5e-3 and rel_rms(s_other, s_default) < FLOAT32_TOL[kernel]


# The chunked forward splits time into segments run in parallel when b * h is small (phases A, B, C
# of wkv6_chunked_cuda.cu); segments= forces their number.
@needs_chunked
@pytest.mark.parametrize("segments", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("t", (33, 161, 250))
def test_chunked_forward_segments(segments, t):
    inputs = make_inputs(2, t, 3, 64, device="cuda", seed=segments + t)
    assert_matches_reference(variant("cuda_chunked", segments=segments), inputs, FLOAT32_TOL["cuda_chunked"])


@needs_chunked
def test_chunked_forward_long_single_sequence_picks_segments_itself():
    inputs = make_inputs(1, 4099, 1, 64, dtype=torch.bfloat16, device="cuda", seed=5)
    args = [inputs[k] for k in NAMES]
    y, s = variant("cuda_chunked")(*args, output_final_state=True)
    ref64 = {k: (x.double().cpu() if x is not None else None) for k, x in inputs.items()}
    y_ref, s_ref = wkv6(*[ref64[k] for k in NAMES], backend="reference", output_final_state=True)
    assert rel_rms(y, y_ref) < 5e-3 and rel_rms(s, s_ref) < 5e-3


def extreme_decay_inputs(n):
    """Decays from exactly 1 (w = 0) to e^-60 per step: a chunk's decay reaches e^-960, far past where the
    factorised form's exp(-A) overflows float32 (e^88); the chunked kernels' exponents all stay <= 0."""
    inputs = make_inputs(2, 70, 2, n, device="cuda", seed=n)
    w = inputs["w"]
    choice = torch.randint(0, 3, w.shape, generator=torch.Generator().manual_seed(n)).to(w.device)
    inputs["w"] = torch.where(choice == 0, torch.zeros_like(w), torch.where(choice == 1, w, torch.full_like(w, -60.0)))
    return inputs


@needs_chunked
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_chunked_forward_with_extreme_decays(n):
    assert_matches_reference(variant("cuda_chunked"), extreme_decay_inputs(n), FLOAT32_TOL["cuda_chunked"])


def test_unknown_kernel_is_refused():
    inputs = make_inputs(1, 4, 2, 64, device="cuda")
    args = [inputs[k] for k in NAMES]
    with pytest.raises(ValueError, match="backend must be one of"):
        wkv6(*args, backend="fastest")
    with pytest.raises(RuntimeError, match=r"kernel must be 0 \(the device's kernel\), 1 .* or 2"):
        torch.ops.rwkv_vision.wkv6_forward(*args, 7, 0)


def test_experimental_kernel_missing_from_the_build_says_how_to_build_it():
    inputs = make_inputs(1, 4, 2, 64, device="cuda")
    args = [inputs[k] for k in NAMES]
    for backend in ("cuda_split", "cuda_chunked"):
        if backend in backend_info()["cuda_variants"]:
            wkv6(*args, backend=backend)
        else:
            with pytest.raises(ValueError, match="RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON"):
                wkv6(*args, backend=backend)


# The chunked backward (backend="cuda_chunked"): its own forward pass keeps the state at every chunk
# start, then chunks are walked in reverse, segments in parallel where b * h is small.
# assert_matches_reference checks every gradient: r, k, v, w (the decay), u and the initial state.
chunked_kernels = variant("cuda_chunked")


@needs_chunked
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t", (1, 2, 15, 16, 17, 65, 257))
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_chunked_backward_matches_float64_reference(n, t, with_state):
    inputs = make_inputs(2, t, 3, n, device="cuda", with_state=with_state, seed=t + n)
    assert_matches_reference(chunked_kernels, inputs, FLOAT32_TOL["cuda_chunked"])


@needs_chunked
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_chunked_backward_half_precision(n, dtype):
    assert_matches_reference(chunked_kernels, make_inputs(2, 300, 5, n, dtype=dtype, device="cuda", seed=n), 5e-3)


@needs_chunked
def test_chunked_backward_output_only_loss():
    # A loss on y only (dsT = 0), many heads.
    inputs = make_inputs(3, 50, 17, 64, device="cuda", seed=2)
    assert_matches_reference(chunked_kernels, inputs, FLOAT32_TOL["cuda_chunked"], state_loss=False)


@needs_chunked
@pytest.mark.parametrize("segments", [2, 3, 7, 1000])
@pytest.mark.parametrize("t", (33, 161, 250))
def test_chunked_backward_segments(segments, t):
    inputs = make_inputs(2, t, 3, 64, device="cuda", seed=segments + t)
    assert_matches_reference(variant("cuda_chunked", segments=segments), inputs, FLOAT32_TOL["cuda_chunked"])


@needs_chunked
def test_chunked_backward_long_single_sequence_picks_segments_itself():
    inputs = make_inputs(1, 2051, 2, 64, device="cuda", seed=4)
    assert_matches_reference(chunked_kernels, inputs, FLOAT32_TOL["cuda_chunked"])


@needs_chunked
@pytest.mark.parametrize("n", CUDA_HEAD_SIZES)
def test_chunked_backward_with_extreme_decays(n):
    assert_matches_reference(chunked_kernels, extreme_decay_inputs(n), FLOAT32_TOL["cuda_chunked"])


@needs_chunked
def test_chunked_kernels_agree_with_the_recurrent_ones_in_bfloat16():
    inputs = make_inputs(2, 777, 4, 64, dtype=torch.bfloat16, device="cuda", seed=12)
    y_c, s_c, g_c = run_with_grads(chunked_kernels, inputs)
    y_r, s_r, g_r = run_with_grads(variant("cuda_recurrent"), inputs)
    assert rel_rms(y_c, y_r) < 5e-3 and rel_rms(s_c, s_r) < 5e-3
    for k in g_r:
        assert rel_rms(g_c[k], g_r[k]) < 5e-3, k


@needs_chunked
def test_chunked_kernels_in_a_cuda_graph():
    # 300 steps at b * h = 2: segments, so every phase and its scratch tensors are captured.
    assert_graph_replay_equals_eager(make_inputs(1, 300, 2, 64, device="cuda", seed=9), chunked_kernels)


@needs_chunked
def test_chunked_kernels_under_torch_compile():
    # The kernel choice and segments are constants of the traced op call.
    inputs = make_inputs(2, 40, 2, 64, device="cuda", seed=14)
    run = variant("cuda_chunked", segments=2)
    compiled = torch.compile(lambda *a: run(*a, output_final_state=True), fullgraph=True)
    y, s = compiled(*[inputs[k] for k in NAMES])
    y_e, s_e = run(*[inputs[k] for k in NAMES], output_final_state=True)
    assert rel_rms(y, y_e) < 1e-6 and rel_rms(s, s_e) < 1e-6


def test_selftest_passes_on_every_cuda_device():
    """The self-test users are told to run first (docs/ops.md, "The self-test") passes here."""
    from rwkv_vision.selftest import run_selftest

    report = run_selftest(devices=[f"cuda:{i}" for i in range(torch.cuda.device_count())])
    assert report.checks and report.passed, report.table()


@pytest.mark.parametrize("backend", ["auto", "kernel"])
def test_autodiff_on_cuda_is_correct_or_refused(backend):
    """Double backward through the CUDA kernel equals the float64 loop's; forward mode runs the chunked
    fallback under "auto" and is refused by an explicit kernel."""
    inputs = make_inputs(1, 19, 2, 64, seed=3, device="cuda")
    args = [inputs[k] for k in NAMES]

    def second(fn, xs):
        leaves = [a.clone().requires_grad_(True) for a in xs]
        y, s = fn(*leaves)
        (gw,) = torch.autograd.grad((y**2).sum() + s.sum(), leaves[3], create_graph=True)
        return torch.autograd.grad(gw.sum(), leaves)

    got = second(lambda *a: wkv6(*a, output_final_state=True, backend=backend), args)
    ref = second(lambda *a: wkv6(*a, output_final_state=True, backend="reference"), [a.double() for a in args])
    for name, a, b in zip(NAMES, got, ref):
        assert rel_rms(a, b) < 1e-4, name
    tangents = [torch.randn_like(a) for a in args]
    f = lambda *a: wkv6(*a, backend=backend)[0]  # noqa: E731
    if backend == "kernel":
        with pytest.raises(ValueError, match="forward-mode AD"):
            torch.func.jvp(f, tuple(args), tuple(tangents))
    else:
        _, dy = torch.func.jvp(f, tuple(args), tuple(tangents))
        _, dy_ref = torch.func.jvp(lambda *a: wkv6(*a, backend="reference")[0], tuple(args), tuple(tangents))
        assert rel_rms(dy, dy_ref) < 1e-5


def test_invalid_w_on_cuda_is_not_checked_and_computed_as_given():
    """Documented: on a GPU w is not checked (a check would sync the host); exp(w) is computed as given,
    so w > 0 grows the state as in the loop."""
    inputs = make_inputs(1, 5, 1, 32, seed=2, device="cuda")
    inputs["w"] = inputs["w"].abs() * 0.1
    args = [inputs[k] for k in NAMES]
    y, _ = wkv6(*args, backend="kernel")
    y_ref, _ = wkv6(*[a.double() for a in args], backend="reference")
    assert rel_rms(y, y_ref) < 1e-5
