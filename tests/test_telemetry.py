"""Quantization telemetry (`quartet_te.telemetry`): sampling, metric values, CSV, and no effect
on the training numerics. CPU only; the shared GEMMs (`quartet_te.gemms`) are what the TE path runs."""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

import quartet_te as qt
from quartet_te import reference as R
from quartet_te.reference.hadamard import hadamard_rotate
from quartet_te.rotation import Operand, RotationState, layer_seed
from quartet_te import gemms as O
from quartet_te.telemetry import COLUMNS, LayerProbe, Telemetry, read_csv, rel_err

RECIPES = [
    pytest.param("quartet2", id="quartet2"),
    pytest.param("quartet2-rot", id="quartet2_rot"),
    pytest.param("nvfp4-sr", id="nvfp4_sr"),
]
GEMMS = {"fprop", "dgrad", "wgrad"}


def _model(recipe, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 256))
    return qt.convert(m, recipe, skip=())


def _train(model, steps, seed=1, m=96):
    g = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(steps):
        x = torch.randn(m, 256, generator=g, requires_grad=True)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    return grads


@pytest.mark.parametrize("recipe", RECIPES)
def test_sampled_steps_log_every_layer_and_gemm_and_only_those(recipe):
    model = _model(recipe)
    tel = Telemetry(every=2, console=False)
    with tel.attach(model):
        _train(model, 4)
    rows = list(tel.rows)
    assert {r.step for r in rows} == {0, 2}
    for step in (0, 2):
        got = sorted((r.layer, r.gemm) for r in rows if r.step == step)
        assert got == sorted((layer, g) for layer in ("0", "2", "4") for g in GEMMS)
    for r in rows:
        assert 0.0 < r.err_out < 0.1 and 0.95 < r.cos_out <= 1.0, r
        assert 0.0 < r.err_a < 0.1, r
        assert math.isnan(r.err_b) if (recipe == "nvfp4-sr" and r.gemm == "wgrad") else r.err_b < 0.1, r


def test_metrics_match_an_independent_computation():
    """One Quartet II layer: every metric recomputed from the reference quantizers."""
    g = torch.Generator().manual_seed(3)
    x, w, e = torch.randn(200, 256, generator=g), torch.randn(128, 256, generator=g) / 16, torch.randn(200, 128, generator=g)
    layer = qt.QuartetLinear(256, 128, bias=False, name="solo")
    with torch.no_grad():
        layer.weight.copy_(w)
    seed = layer.rotation.seed
    tel = Telemetry(every=1, console=False).attach(layer)
    layer(x.clone().requires_grad_()).backward(e)
    rows = {r.gemm: r for r in tel.rows}
    assert set(rows) == GEMMS and all(r.layer == "QuartetLinear" for r in rows.values())

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

    xq, wq = R.quantize(x, "four_over_six"), R.quantize(w, "four_over_six")
    y, y_ref = xq.dequantize() @ wq.dequantize().t(), x @ w.t()
    f = rows["fprop"]
    assert f.err_a == pytest.approx(((xq.dequantize() - x).norm() ** 2 / x.norm() ** 2).item(), rel=1e-5)
    assert f.err_b == pytest.approx(((wq.dequantize() - w).norm() ** 2 / w.norm() ** 2).item(), rel=1e-5)
    assert f.err_out == pytest.approx(((y - y_ref).norm() ** 2 / y_ref.norm() ** 2).item(), rel=1e-4)
    assert f.cos_out == pytest.approx(cos(y, y_ref), abs=1e-7)

    draw = RotationState(seed).next_backward("cpu")
    s = draw.signs
    eq = R.quantize(e, "ms_eden", signs=s, seed=seed, offset=draw.offset(Operand.GRAD_ROWWISE))
    wtq = R.requantize(wq, signs=s, seed=seed, offset=draw.offset(Operand.WEIGHT_T))
    dx, dx_ref = eq.dequantize() @ wtq.dequantize().t(), e @ wq.dequantize()
    d = rows["dgrad"]
    assert d.err_a == pytest.approx(rel_err(eq.dequantize(), hadamard_rotate(e, s)), rel=1e-6)
    assert d.err_b == pytest.approx(rel_err(wtq.dequantize(), hadamard_rotate(wq.dequantize().t(), s)), rel=1e-6)
    assert d.err_out == pytest.approx(((dx - dx_ref).norm() ** 2 / dx_ref.norm() ** 2).item(), rel=1e-3)
    assert d.cos_out == pytest.approx(cos(dx, dx_ref), abs=1e-6)
    assert 0.0 < d.err_out < 0.05 and d.cos_out > 0.97  # one unbiased sample: close, not exact

    pad = torch.cat((e, e.new_zeros(56, 128)))  # tokens zero-padded to 256 for the rotation along M
    etq = R.quantize(pad, "ms_eden", signs=s, seed=seed, offset=draw.offset(Operand.GRAD_COLWISE), transpose=True)
    xtq = R.requantize(xq.pad_rows(256), signs=s, seed=seed, offset=draw.offset(Operand.INPUT_T))
    dw, dw_ref = etq.dequantize() @ xtq.dequantize().t(), e.t() @ xq.dequantize()
    wg = rows["wgrad"]
    assert wg.err_a == pytest.approx(rel_err(etq.dequantize(), hadamard_rotate(pad.t(), s)), rel=1e-6)
    assert wg.err_out == pytest.approx(((dw - dw_ref).norm() ** 2 / dw_ref.norm() ** 2).item(), rel=1e-3)
    assert wg.cos_out == pytest.approx(cos(dw, dw_ref), abs=1e-6)


def test_rel_err_is_basis_free_for_orthonormal_rotations():
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randn(64, 256, generator=g), 0.1 * torch.randn(64, 256, generator=g)
    s = RotationState(7).fixed_signs(128, "cpu")
    assert rel_err(hadamard_rotate(t + noise, s), hadamard_rotate(t, s)) == pytest.approx(rel_err(t + noise, t), rel=1e-5)


def test_unquantized_backward_is_exact():
    """backward_quant=False: dgrad is exactly e·Ŵ and wgrad eᵀ·x̂, so cosine 1 and error 0."""
    model = _model(qt.Quartet2Recipe(backward_quant=False))
    tel = Telemetry(every=3, console=False)
    with tel.attach(model):
        _train(model, 4)
    rows = list(tel.rows)
    assert {r.step for r in rows} == {0, 3}  # counted by the layer itself (no draws)
    back = [r for r in rows if r.gemm != "fprop"]
    assert len(back) == 2 * 2 * 3
    for r in back:
        assert r.err_out == 0.0 and r.cos_out == pytest.approx(1.0, abs=1e-12) and r.err_a == r.err_b == 0.0


@pytest.mark.parametrize("recipe", RECIPES)
def test_telemetry_changes_no_gradient_bit(recipe):
    plain, probed = _model(recipe), _model(recipe)
    ref = _train(plain, 3)
    tel = Telemetry(every=1, console=False).attach(probed)
    got = _train(probed, 3)
    assert len(tel.rows) == 3 * 3 * 3
    for a, b in zip(ref, got):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    assert [m.rotation.step for m in plain.modules() if hasattr(m, "rotation")] == [
        m.rotation.step for m in probed.modules() if hasattr(m, "rotation")
    ]


def test_detach_stops_logging_and_copies_carry_no_telemetry():
    model = _model("quartet2")
    tel = Telemetry(every=1, console=False)
    with tel.attach(model):
        clone = copy.deepcopy(model)
        _train(model, 1)
    n = len(tel.rows)
    assert n == 9
    assert all(getattr(m.rotation, "telemetry") is None for m in model.modules() if hasattr(m, "rotation"))
    _train(model, 2)
    _train(clone, 1)
    assert len(tel.rows) == n
    tel.attach(model)  # re-attach after detach is fine, twice is not
    with pytest.raises(ValueError, match="already has telemetry"):
        Telemetry(console=False).attach(model)
    tel.detach()


def test_attach_needs_a_hookable_layer():
    with pytest.raises(ValueError, match="no layer of Sequential"):
        Telemetry().attach(nn.Sequential(nn.Linear(16, 16)))
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        Telemetry(every=0)


def test_csv_header_rows_and_append(tmp_path):
    path = tmp_path / "tel.csv"
    model = _model("nvfp4-sr")
    tel = Telemetry(every=2, csv_path=path, console=False)
    with tel.attach(model):
        _train(model, 3)
    tel.close()
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 1 + 2 * 9
    rows = list(read_csv(path))
    assert list(map(repr, rows)) == list(map(repr, tel.rows))  # floats round-trip (NaN != NaN)
    # a second run appends without a second header
    tel2 = Telemetry(every=2, csv_path=path, console=False)
    with tel2.attach(model):
        _train(model, 1)  # step 3: not sampled
        _train(model, 1)  # step 4: sampled
    tel2.close()
    assert len(list(read_csv(path))) == 3 * 9 and path.read_text().count("step,layer") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match="exists with header 'a,b'"):
        Telemetry(csv_path=bad)


def test_console_summary_is_logged_not_printed(capsys, caplog):
    """The summary goes to the `quartet_te.telemetry` logger at INFO (the application decides
    where it shows), never to stdout/stderr directly; it names the worst layer per GEMM."""
    model = _model("quartet2")
    with caplog.at_level(logging.INFO, logger="quartet_te.telemetry"):
        with Telemetry(every=1, console=True).attach(model) as tel:
            _train(model, 2)
    out = capsys.readouterr()
    assert "quartet_te telemetry" not in out.out + out.err
    recs = [r for r in caplog.records if r.name == "quartet_te.telemetry"]
    assert all(r.levelno == logging.INFO for r in recs)
    lines = [r.getMessage() for r in recs]
    assert len(lines) == 2 and lines[0].startswith("[quartet_te telemetry] step 0 (9 GEMMs)")
    worst = max((r for r in tel.rows if r.step == 1 and r.gemm == "wgrad"), key=lambda r: r.err_out)
    assert f"wgrad worst {worst.layer}: err {worst.err_out:.3e}" in lines[1]


def test_tensorboard_missing_is_a_clear_import_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ImportError, match="pip install tensorboard"):
        Telemetry(tensorboard_dir=tmp_path)


@pytest.mark.parametrize("recipe", [qt.Quartet2Recipe(), qt.Quartet2Recipe(forward_rotation=True), qt.NVFP4Recipe()],
                         ids=["quartet2", "quartet2_rot", "nvfp4"])
def test_te_operands_hooks_match_quartet_linear(recipe):
    """The TE path's hooks (`quartet_te.gemms` with `record`) measure what QuartetLinear measures."""
    g = torch.Generator().manual_seed(5)
    x, w, e = torch.randn(256, 128, generator=g), torch.randn(128, 128, generator=g) / 12, torch.randn(256, 128, generator=g)
    lin = qt.QuartetLinear(128, 128, bias=False, recipe=recipe, name="l")
    with torch.no_grad():
        lin.weight.copy_(w)
    ref_tel = Telemetry(every=1, console=False).attach(lin)
    lin(x.clone().requires_grad_()).backward(e)

    tel = Telemetry(every=1, console=False)
    fixed, grad_rot = RotationState(layer_seed(recipe.seed, "l")), RotationState(layer_seed(recipe.seed, "l"))
    probe = LayerProbe(tel, "QuartetLinear", grad_rot, draws=True)
    xo, wo = O.quantize_input(x, recipe, fixed), O.quantize_weight(w, recipe, fixed)
    xo.hp, wo.hp = x, w  # what the TE quantizers keep on a sampled step
    O.fprop(xo, wo, None, recipe, torch.float32, lambda *a: probe.record(probe.forward_step(), *a))
    go = O.make_grad(e, recipe, grad_rot)
    step = probe.backward_step(go.draw, call=go)
    O.dgrad(go, wo, recipe, torch.float32, lambda *a: probe.record(step, *a))
    O.wgrad(go, xo, recipe, torch.float32, lambda *a: probe.record(step, *a))
    want = {r.gemm: r for r in ref_tel.rows}
    got = {r.gemm: r for r in tel.rows}
    assert set(got) == GEMMS
    for gemm in GEMMS:
        for field in ("err_a", "err_b", "err_out", "cos_out"):
            a, b = getattr(got[gemm], field), getattr(want[gemm], field)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-9), (gemm, field)


def test_one_fprop_row_per_step_even_with_extra_forwards():
    """An evaluation forward before the training forward of a sampled step is measured once."""
    model = _model("quartet2")
    tel = Telemetry(every=1, console=False).attach(model)
    with torch.no_grad():
        model(torch.randn(128, 256))
        model(torch.randn(128, 256))
    _train(model, 1)
    assert sorted((r.layer, r.gemm) for r in tel.rows) == sorted((l, g) for l in ("0", "2", "4") for g in GEMMS)
