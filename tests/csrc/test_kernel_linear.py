"""Device test: the Quartet II (and NVFP4-baseline) linear built on the kernels equals the same
layer running on the reference: identical quantized operands, GEMMs differing only in summation
order."""
import pytest
import torch

from quartet_te import kernels as K
from quartet_te.linear import QuartetLinear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not K.is_available(), reason=K.is_available(return_reason=True)[1]),
]


def _run(recipe, device, x, w, b, steps=2):
    """The layer on `device`: CUDA runs the kernels, CPU the reference (the contract's bits: on
    CUDA tensors the reference divides by Python scalars through reciprocals)."""
    x, w, b = x.to(device), w.to(device), b.to(device)
    layer = QuartetLinear(w.shape[1], w.shape[0], bias=True, recipe=recipe, name="l0", device=device)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    outs = []
    for _ in range(steps):  # two steps: fresh signs per backward call
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)
        y.backward(g)
        outs.append([t.cpu() for t in (y.detach(), xi.grad, layer.weight.grad, layer.bias.grad)])
        layer.zero_grad()
    return outs


@pytest.mark.parametrize("recipe", ["quartet2", "nvfp4-sr"])
@pytest.mark.parametrize("tokens", [256, 200], ids=["m256", "m200-padded"])
def test_linear_kernels_match_reference(recipe, tokens):
    gen = torch.Generator().manual_seed(3)
    k, n = 256, 384
    x = torch.randn(tokens, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / 16
    b = torch.randn(n, generator=gen)
    got = _run(recipe, "cuda", x, w, b)
    ref = _run(recipe, "cpu", x, w, b)
    for step, (g, r) in enumerate(zip(got, ref)):
        for name, a, e in zip(("y", "dx", "dW", "db"), g, r):
            err = float((a.float() - e.float()).norm() / e.float().norm().clamp_min(1e-30))
            assert err < 1e-5, f"step {step} {name}: relative error {err:.2e}"
