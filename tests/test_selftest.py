"""rwkv_vision.selftest and ``rwkv-vision selftest``: every compiled kernel checked against float64 on
this machine; a broken kernel (monkeypatched) fails the check and the command exits non-zero."""

from __future__ import annotations

import pytest
import torch

import rwkv_vision.ops.wkv6_kernel as wkv6_kernel
import rwkv_vision.ops.wkv7_kernel as wkv7_kernel
from rwkv_vision import cli
from rwkv_vision.ops import has_extension
from rwkv_vision.selftest import TOLERANCES, run_selftest

pytestmark = pytest.mark.skipif(not has_extension(), reason="compiled extension not built")


class _Broken:
    """torch.ops.rwkv_vision with one op's output nudged by 1e-3 (relative)."""

    def __init__(self, real, broken: str):
        self._real, self._broken = real, broken

    def __getattr__(self, name):
        op = getattr(self._real, name)
        if name != self._broken:
            return op

        def nudged(*args):
            out = op(*args)
            return (out[0] * 1.001, *out[1:]) if isinstance(out, tuple) else out * 1.001

        return nudged


def test_every_cpu_kernel_passes_with_its_error_and_tolerance():
    report = run_selftest(devices=["cpu"], head_sizes=[32, 40])
    assert report.passed and not report.failures
    kinds = {(c.kernel, c.dtype, c.head_size) for c in report.checks}
    for kernel in ("wkv6 kernel", "wkv6_step", "wkv7 kernel", "wkv7_step"):
        for dtype in ("float32", "bfloat16", "float16", "float64"):
            for n in (32, 40):
                assert (kernel, dtype, n) in kinds
    for c in report.checks:
        assert c.device == "cpu" and c.tolerance == TOLERANCES[c.dtype] and 0 <= c.error <= c.tolerance
    table = report.table()
    assert "FAIL" not in table and f"all {len(report.checks)} kernel checks pass" in table


def test_the_default_run_covers_the_cpu_and_every_cuda_device():
    report = run_selftest(dtypes=["float32"], head_sizes=[32])
    devices = {c.device for c in report.checks}
    assert "cpu" in devices
    if torch.cuda.is_available() and "cuda" in wkv6_kernel.KERNEL_DEVICES:
        assert {f"cuda:{i}" for i in range(torch.cuda.device_count())} <= devices
    assert report.passed


@pytest.mark.parametrize(
    "broken, kernel",
    [
        ("wkv6_forward", "wkv6 kernel"),
        ("wkv6_backward", "wkv6 kernel"),
        ("wkv6_step", "wkv6_step"),
        ("wkv7_forward", "wkv7 kernel"),
        ("wkv7_backward", "wkv7 kernel"),
        ("wkv7_step", "wkv7_step"),
    ],
)
def test_a_broken_kernel_fails(monkeypatch, broken, kernel):
    module = wkv7_kernel if broken.startswith("wkv7") else wkv6_kernel
    if broken.endswith("_backward"):  # the registered autograd calls torch.ops.rwkv_vision.wkv*_backward
        monkeypatch.setattr(torch.ops.rwkv_vision, broken, getattr(_Broken(torch.ops.rwkv_vision, broken), broken))
    else:
        monkeypatch.setattr(module, "_OPS", _Broken(module._OPS, broken))
    report = run_selftest(devices=["cpu"], dtypes=["float32"], head_sizes=[32])
    assert not report.passed
    failed = report.failures
    assert [c.kernel for c in failed] == [kernel]
    assert failed[0].error > failed[0].tolerance
    assert "FAIL" in report.table() and "FAILED: 1 of 4" in report.table()


def test_a_kernel_that_raises_is_a_failure(monkeypatch):
    def boom(*args):
        raise RuntimeError("illegal memory access")

    broken = _Broken(wkv6_kernel._OPS, "")
    broken.wkv6_step = boom
    monkeypatch.setattr(wkv6_kernel, "_OPS", broken)
    report = run_selftest(devices=["cpu"], dtypes=["float32"], head_sizes=[32])
    (failed,) = report.failures
    assert failed.kernel == "wkv6_step" and failed.error == float("inf") and "illegal memory access" in failed.worst


def test_cli_selftest_prints_the_table_and_exits_0(capsys):
    assert cli.main(["selftest", "--device", "cpu", "--dtype", "float32", "--head-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "wkv6 kernel" in out and "wkv6_step" in out and "wkv7 kernel" in out and "wkv7_step" in out
    assert "pass" in out and "all 4 kernel checks pass" in out


def test_cli_selftest_exits_non_zero_on_a_mismatch(monkeypatch, capsys):
    monkeypatch.setattr(wkv6_kernel, "_OPS", _Broken(wkv6_kernel._OPS, "wkv6_forward"))
    assert cli.main(["selftest", "--device", "cpu", "--dtype", "bfloat16", "--head-size", "32"]) == 0
    monkeypatch.setattr(wkv6_kernel, "_OPS", _Broken(wkv6_kernel._OPS, "wkv6_step"))
    assert cli.main(["selftest", "--device", "cpu", "--dtype", "float32", "--head-size", "32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED" in out


def test_unsupported_requests_are_reported_not_checked():
    report = run_selftest(devices=["cuda:7", "meta"], dtypes=["float32"], head_sizes=[32])
    assert report.checks == [] and report.passed
    assert any("cuda:7" in s for s in report.skipped) and any("meta" in s for s in report.skipped)
    assert "no compiled kernel was checked" in report.table()
    with pytest.raises(ValueError, match="unknown dtype"):
        run_selftest(dtypes=["int8"])
    with pytest.raises(ValueError, match="head sizes"):
        run_selftest(head_sizes=[0])


def test_without_the_extension_nothing_is_checked_and_it_says_why(monkeypatch):
    monkeypatch.setattr(wkv6_kernel, "_OPS", None)
    report = run_selftest()
    assert report.checks == [] and "compiled extension is not loaded" in report.skipped[0]
