"""`quartet_te.convert`: skip lists that say what they mean, shared linears converted at every
place they appear, and all-or-nothing conversion."""
import pytest
import torch
from torch import nn

import quartet_te as qt


class _Tied(nn.Module):
    """One nn.Linear used at two places (as in weight-shared blocks)."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(128, 128)
        self.enc = nn.Sequential(shared, nn.ReLU())
        self.dec = nn.Sequential(shared, nn.ReLU())
        self.lm_head = nn.Linear(128, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.dec(self.enc(x)))


def _kinds(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, nn.Linear)}


def test_a_single_str_skip_is_refused_not_iterated():
    """skip="lm_head" used to skip the layers named 'l', 'm', ... and quantize lm_head."""
    model = nn.ModuleDict({"proj": nn.Linear(128, 128), "lm_head": nn.Linear(128, 256)})
    with pytest.raises(TypeError, match=r"not a single str: use skip=\('lm_head',\)"):
        qt.convert(model, skip="lm_head")
    assert _kinds(model) == {"proj": "Linear", "lm_head": "Linear"}
    qt.convert(model, skip=("lm_head",))
    assert _kinds(model) == {"proj": "QuartetLinear", "lm_head": "Linear"}


def test_skip_entries_that_match_nothing_are_named():
    model = nn.ModuleDict({"proj": nn.Linear(128, 128), "lm_head": nn.Linear(128, 256)})
    with pytest.raises(ValueError, match=r"skip entries \['lmhead'\] match no nn.Linear.*'proj', 'lm_head'"):
        qt.convert(model, skip=("lm_head", "lmhead"))
    assert _kinds(model) == {"proj": "Linear", "lm_head": "Linear"}
    # the default ("lm_head" where there is one) stays quiet on models without one
    assert _kinds(qt.convert(nn.Sequential(nn.Linear(128, 128)))) == {"0": "QuartetLinear"}


def test_a_shared_linear_is_converted_at_every_place():
    torch.manual_seed(0)
    model = _Tied()
    shared_weight = model.enc[0].weight
    qt.convert(model)
    assert model.enc[0] is model.dec[0], "the two places must stay one module"
    assert isinstance(model.enc[0], qt.QuartetLinear) and model.enc[0].weight is shared_weight
    assert type(model.lm_head) is nn.Linear
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    model(x).sum().backward()
    assert model.enc[0].rotation.step == 2  # one backward call per use
    # both uses ran quantized: the output differs from the same model in high precision
    ref = _Tied()
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")})
    assert not torch.allclose(model(x), ref(x), rtol=1e-3, atol=1e-3)


def test_a_shared_linear_skipped_at_one_place_only_is_an_error():
    model = _Tied()
    with pytest.raises(ValueError, match=r"shared as \['enc.0', 'dec.0'\].*keeps only \['dec.0'\]"):
        qt.convert(model, skip=("dec.0",))
    assert _kinds(model) == {"enc.0": "Linear", "dec.0": "Linear", "lm_head": "Linear"}


def test_a_failing_convert_changes_nothing():
    """The bad layer comes last: earlier layers must not have been swapped already."""
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.Linear(40, 128), nn.Linear(24, 8))
    before = dict(model.named_modules())
    with pytest.raises(ValueError, match=r"left unchanged.*3: in_features=40.*; 4: in_features=24"):
        qt.convert(model, "quartet2", skip=())
    assert dict(model.named_modules()) == before
    assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))


def test_a_failing_swap_is_rolled_back():
    """Even an error while swapping (here from a container that refuses one assignment)
    restores every place already swapped."""

    class Picky(nn.Sequential):
        def __setattr__(self, name, value):
            if name == "1" and isinstance(value, qt.QuartetLinear):
                raise RuntimeError("refused")
            super().__setattr__(name, value)

    model = nn.Sequential(nn.Linear(128, 128), Picky(nn.Linear(128, 128), nn.Linear(128, 128)))
    before = {n: m for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="refused"):
        qt.convert(model, skip=())
    assert {n: m for n, m in model.named_modules()} == before
