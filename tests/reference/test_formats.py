"""E2M1 / E4M3 formats and nibble packing: hand-computed vectors and exhaustive round trips."""
import pytest
import torch

from quartet_te.reference import formats as F


def test_e2m1_decode_all_codes():
    codes = torch.arange(16, dtype=torch.uint8)
    expect = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    got = F.e2m1_decode(codes)
    assert got.tolist() == expect
    assert torch.signbit(got[8])  # code 8 is -0


@pytest.mark.parametrize(
    "value,code",
    [
        (0.0, 0), (0.25, 0), (0.2500001, 1), (0.74, 1), (0.75, 2), (1.25, 2), (1.26, 3),
        (1.75, 4), (2.5, 4), (2.51, 5), (3.5, 6), (4.9, 6), (5.0, 6), (5.01, 7), (100.0, 7),
        (-0.1, 8), (-0.75, 10), (-5.5, 15),
    ],
    ids=lambda v: str(v),
)
def test_e2m1_encode_ties_to_even(value, code):
    assert int(F.e2m1_encode(torch.tensor([value]))[0]) == code


def test_every_representable_value_round_trips():
    grid = torch.tensor(F.E2M1_GRID)
    values = torch.cat((grid, -grid[1:]))
    assert torch.equal(F.e2m1_decode(F.e2m1_encode(values)), values)


def test_pack_low_nibble_first():
    codes = torch.tensor([[0x1, 0x2, 0xF, 0x8]], dtype=torch.uint8)
    packed = F.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x8F]]
    assert torch.equal(F.unpack_nibbles(packed), codes)


def test_pack_round_trip_random(gen):
    codes = torch.randint(0, 16, (7, 64), generator=gen, dtype=torch.uint8)
    assert torch.equal(F.unpack_nibbles(F.pack_nibbles(codes)), codes)
    with pytest.raises(ValueError, match="odd"):
        F.pack_nibbles(codes[:, :3])


def test_e4m3_rounding_and_saturation():
    v = torch.tensor([448.0, 460.0, 1000.0, 1.0625, 1.1875, 2.0**-9, 2.0**-11])
    got = F.e4m3_rn(v).float().tolist()
    # 1.0625 is halfway between 1 and 1.125: ties to even -> 1.0; 1.1875 -> 1.25 (even mantissa).
    assert got == [448.0, 448.0, 448.0, 1.0, 1.25, 2.0**-9, 0.0]


def test_e4m3_neighbours_bracket(gen):
    v = torch.rand(10000, generator=gen) * 448
    down, up = F.e4m3_neighbours(v)
    assert bool((down <= v).all()) and bool((up >= v).all())
    exact = F.e4m3_rn(v).float() == v
    assert bool(((up > down) | exact).all())
    # adjacent codes: nothing representable strictly between down and up
    dcode = down.to(torch.float8_e4m3fn).view(torch.uint8).int()
    ucode = up.to(torch.float8_e4m3fn).view(torch.uint8).int()
    assert bool(((ucode - dcode) <= 1).all())
    d, u = F.e4m3_neighbours(torch.tensor([448.0, 3.0, 3.1]))
    assert d.tolist() == [448.0, 3.0, 3.0] and u.tolist() == [448.0, 3.0, 3.25]


def test_constants():
    assert F.D_RTN == 2688.0 and F.D_46 == 1536.0
    assert abs(F.M_SR - 6 * 16 / 17) < 1e-6
    assert abs(F.M_EDEN - 6 / (17 / 16 * 0.93)) < 1e-6
