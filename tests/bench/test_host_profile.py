"""quartet_te.bench.host_profile: the package rows a host profile is summed into."""
from __future__ import annotations

import cProfile

import pytest

from quartet_te.bench import host_profile as H


@pytest.mark.parametrize(
    "filename, function, package",
    [
        ("~", "<built-in method quartet_te._C.quantize>", "quartet_te C++ (_C)"),
        ("/x/site-packages/quartet_te/kernels.py", "quantize_both", "quartet_te Python"),
        ("/work/main/integration/megatron/registry.py", "get_fp4_recipe", "quartet_te Python"),
        ("~", "<built-in method transformer_engine_torch.generic_gemm>", "TE C++ (transformer_engine_torch)"),
        ("/x/transformer_engine/pytorch/module/linear.py", "forward", "TE Python"),
        ("/x/megatron/core/transformer/transformer_layer.py", "forward", "Megatron Python"),
        ("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>", "autograd engine"),
        ("~", "<built-in method torch.empty>", "torch C++ (other built-ins)"),
        ("/usr/lib/python3.11/functools.py", "wrapper", "other Python (torch, stdlib)"),
    ],
)
def test_package_of(filename, function, package):
    assert H.package_of(filename, function) == package


def _busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_report_divides_by_steps_and_lists_every_row():
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(4):
        _busy(20000)
    prof.disable()
    text = H.report(prof, steps=4, what="step", top=5)
    assert "host ms per step by package (4 steps" in text
    for name, _ in H.PACKAGES:
        assert name in text
    import pstats

    totals = H.by_package(pstats.Stats(prof))
    assert set(totals) == {name for name, _ in H.PACKAGES}
    assert totals["other Python (torch, stdlib)"] > 0  # this test file counts as "other"
    assert abs(sum(totals.values()) - pstats.Stats(prof).total_tt) < 1e-9
    with pytest.raises(ValueError, match="steps must be positive"):
        H.report(prof, steps=0)
