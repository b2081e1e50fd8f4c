"""The randomized Hadamard transform: orthogonal, signs first, matches the dense matrix."""
import pytest
import torch

from quartet_te.reference import hadamard_matrix, hadamard_rotate, hadamard_unrotate, random_signs


@pytest.mark.parametrize("n", [16, 128])
def test_matches_dense_definition(n, gen):
    x = torch.randn(8, 2 * n, generator=gen)
    s = random_signs(n, 3, 0)
    h = hadamard_matrix(n) / n**0.5
    expect = torch.cat([(x[:, i * n:(i + 1) * n] * s) @ h for i in range(2)], dim=1)
    assert torch.allclose(hadamard_rotate(x, s), expect, atol=1e-5)


@pytest.mark.parametrize("n", [16, 128])
def test_orthogonal(n, gen):
    x = torch.randn(32, 256, generator=gen)
    s = random_signs(n, 4, 0)
    y = hadamard_rotate(x, s)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5)
    assert torch.allclose(hadamard_unrotate(y, s), x, atol=1e-5)
    h = hadamard_matrix(n)
    assert torch.equal(h @ h.t(), n * torch.eye(n))


def test_signs_first_then_hadamard(gen):
    # diag(s)·H differs from H·diag(s): applying signs after H only flips output signs.
    x = torch.randn(4, 128, generator=gen)
    s = random_signs(128, 5, 0)
    h = hadamard_matrix(128) / 128**0.5
    assert torch.allclose(hadamard_rotate(x, s), (x * s) @ h, atol=1e-5)
    assert not torch.allclose(hadamard_rotate(x, s), (x @ h) * s, atol=1e-3)


def test_shared_rotation_preserves_products(gen):
    a, b = torch.randn(16, 256, generator=gen), torch.randn(24, 256, generator=gen)
    s = random_signs(128, 6, 0)
    assert torch.allclose(hadamard_rotate(a, s) @ hadamard_rotate(b, s).t(), a @ b.t(), atol=1e-4)


def test_bad_signs():
    x = torch.randn(2, 128)
    with pytest.raises(ValueError, match="16 or 128"):
        hadamard_rotate(x, torch.ones(64))
    with pytest.raises(ValueError, match=r"\+1 and -1"):
        hadamard_rotate(x, torch.full((128,), 0.5))
    with pytest.raises(ValueError, match="multiple of the rotation size"):
        hadamard_rotate(torch.randn(2, 144), torch.ones(128))


@pytest.mark.parametrize("n", [16, 128])
def test_prescaled_butterfly_has_the_bits_of_the_unscaled_one(n, gen):
    # Contract v2 pre-scales by 1/n and multiplies by n·float32(1/√n) at the end: on normal data
    # that is bit for bit the unscaled butterfly followed by the 1/√n multiply (contract v1).
    from quartet_te.reference.formats import INV_SQRT
    from quartet_te.reference.hadamard import fwht

    x = torch.randn(64, 4 * n, generator=gen) * torch.logspace(-30, 30, 64, base=2.0)[:, None]
    s = random_signs(n, 9, 1)
    v1 = fwht(x.reshape(64, -1, n) * s, n).reshape(x.shape) * INV_SQRT[n]
    assert torch.equal(hadamard_rotate(x, s).view(torch.int32), v1.view(torch.int32))


def test_rotation_does_not_overflow_on_finite_data_near_the_float32_maximum(gen):
    # |x| up to 2.9e37: an unscaled butterfly's partial sums (up to 128·|x|) overflow; the rotated
    # values themselves (at most √128·|x| = 3.3e38) are finite.
    from quartet_te.reference.formats import INV_SQRT
    from quartet_te.reference.hadamard import fwht

    x = (torch.rand(64, 256, generator=gen) * 2 - 1) * 2.9e37
    x[:, ::128] = 2.9e37  # one large common value per chunk: the worst case of the partial sums
    s = torch.ones(128)
    assert not torch.isfinite(fwht(x.reshape(64, -1, 128) * s, 128) * INV_SQRT[128]).all()  # v1
    y = hadamard_rotate(x, s)
    assert torch.isfinite(y).all()
    assert torch.allclose(hadamard_unrotate(y, s), x, rtol=1e-5, atol=1e32)
