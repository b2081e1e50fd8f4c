"""Per-layer randomness: fresh signs per step, reproducible, checkpointable, rank-independent."""
import pytest
import torch

from quartet_te.rotation import STREAMS_PER_STEP, Operand, RotationState, layer_seed


def test_fresh_signs_every_backward_and_reproducible():
    a, b = RotationState(11), RotationState(11)
    draws = [a.next_backward("cpu") for _ in range(4)]
    assert [d.step for d in draws] == [0, 1, 2, 3] and a.step == 4
    assert all(set(d.signs.unique().tolist()) == {-1.0, 1.0} for d in draws)
    assert not torch.equal(draws[0].signs, draws[1].signs)
    assert torch.equal(draws[2].signs, [b.next_backward("cpu") for _ in range(3)][2].signs)


def test_operand_streams_are_distinct():
    d = RotationState(1).next_backward("cpu")
    offsets = {d.offset(op) for op in (Operand.SIGNS, Operand.GRAD_ROWWISE, Operand.WEIGHT_T, Operand.GRAD_COLWISE, Operand.INPUT_T)}
    assert len(offsets) == 5 and max(offsets) < STREAMS_PER_STEP


def test_state_dict_resumes_the_stream():
    a = RotationState(5)
    for _ in range(3):
        a.next_backward("cpu")
    b = RotationState(0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_backward("cpu").signs, b.next_backward("cpu").signs)


def test_fixed_signs_do_not_change():
    a = RotationState(5)
    s = a.fixed_signs(128, "cpu")
    a.next_backward("cpu")
    assert torch.equal(s, a.fixed_signs(128, "cpu"))
    assert a.fixed_signs(16, "cpu").numel() == 16


def test_layer_seed_depends_on_name_not_process():
    assert layer_seed(0, "decoder.layers.0.mlp.fc1") == layer_seed(0, "decoder.layers.0.mlp.fc1")
    assert layer_seed(0, "a") != layer_seed(0, "b") != layer_seed(1, "b")
    with pytest.raises(ValueError, match="64 unsigned bits"):
        RotationState(-1)
