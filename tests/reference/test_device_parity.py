"""The reference gives the same bits on CUDA as on CPU (true divisions, same Philox words)."""
import pytest
import torch

from quartet_te import reference as R

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (1024, 2048)], ids=str)
def test_cuda_reference_equals_cpu_reference(mode, shape):
    g = torch.Generator().manual_seed(sum(shape) + len(mode))
    x = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 50
    kw = {"seed": 77, "offset": 5} if mode in ("sr", "ms_eden") else {}
    signs = R.random_signs(128, 3, 0) if mode == "ms_eden" else None
    cpu = R.quantize(x, mode, signs=signs, **kw)
    gpu = R.quantize(x.cuda(), mode, signs=None if signs is None else signs.cuda(), **kw)
    assert torch.equal(cpu.data, gpu.data.cpu())
    assert torch.equal(cpu.block_scales.view(torch.uint8), gpu.block_scales.cpu().view(torch.uint8))
    assert torch.equal(cpu.tensor_scale, gpu.tensor_scale.cpu())
