"""Philox4x32-10: known-answer vectors (Random123) and the index/stream layout."""
import torch

from quartet_te.reference import rng


def _words(ctr, key):
    t = tuple(torch.tensor([c], dtype=torch.int64) for c in ctr)
    return [int(w) for w in rng.philox4x32(t, key)]


def test_known_answer_vectors():
    assert _words((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    assert _words((m, m, m, m), (m, m)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    pi = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert _words(pi, (0xA4093822, 0x299F31D0)) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_index_layout():
    seed, offset = (7 << 32) | 3, (5 << 32) | 9
    r = rng.random_u32(10, seed, offset)
    ctr = (2, 0, offset & 0xFFFFFFFF, offset >> 32)
    assert r[8:10].tolist() == _words(ctr, (3, 7))[:2]


def test_streams_and_seeds_differ():
    a = rng.random_u32(64, 1, 0)
    assert not torch.equal(a, rng.random_u32(64, 1, 1))
    assert not torch.equal(a, rng.random_u32(64, 2, 0))
    assert torch.equal(a, rng.random_u32(64, 1, 0))


def test_uniform_and_signs_statistics():
    u = rng.uniform(1 << 16, 11, 0)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005  # 5 sigma: 1/sqrt(12 * 65536) ~ 0.0011
    s = rng.random_signs(1 << 16, 11, 1)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.02  # 5 sigma ~ 0.0195


def test_short_python_path_equals_tensor_path():
    seed, offset = (123 << 40) | 77, (9 << 33) | 5
    long = rng.random_u32(2048, seed, offset)
    assert torch.equal(rng.random_u32(300, seed, offset), long[:300])
    assert torch.equal(rng.random_u32(1, seed, offset), long[:1])
