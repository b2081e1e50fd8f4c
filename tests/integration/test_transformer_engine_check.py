"""Without Transformer Engine, the TE layer path fails up front, naming both ways out.

Megatron-LM's default `--transformer-impl transformer_engine` used to fail deep inside model
construction with `NameError: TESpecProvider`. CPU CI has no TE, so the check must fire here.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from quartet_te.te import is_available

pytest.importorskip("megatron.core", reason="needs megatron-core (pip install megatron-core==0.16.1)")

if is_available():
    pytest.skip("Transformer Engine is usable here: the no-TE checks cannot fire", allow_module_level=True)

DRIVER = Path(__file__).resolve().parents[2] / "examples" / "pretrain_gpt.py"


def _script(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "ran.txt"
    script = tmp_path / "train_script.py"
    script.write_text(f"import sys\nopen({str(out)!r}, 'w').write(' '.join(sys.argv[1:]))\n")
    return script, out


@pytest.mark.parametrize("flags", [[], ["--transformer-impl", "transformer_engine"],
                                   ["--transformer-impl=transformer_engine"],
                                   ["--transformer-impl", "local", "--transformer-impl", "transformer_engine"]],
                         ids=["default", "explicit", "equals", "last_wins"])
def test_launcher_refuses_te_layers_without_te(tmp_path, monkeypatch, flags):
    from quartet_te.integration.megatron import launch

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script, out = _script(tmp_path)
    with pytest.raises(SystemExit) as exc:
        launch.main([str(script), "--fp4-format", "e2m1", "--fp4-recipe", "quartet2", *flags])
    msg = str(exc.value)
    assert "needs Transformer Engine" in msg and "--transformer-impl local" in msg
    assert "transformer_engine" in msg and "pip install" in msg
    assert not out.exists(), "the script must not start"


def test_launcher_runs_local_layers_without_te(tmp_path, monkeypatch):
    from quartet_te.integration.megatron import launch

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script, out = _script(tmp_path)
    launch.main([str(script), "--transformer-impl", "local"])
    assert out.read_text() == "--transformer-impl local"


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("pretrain_gpt_te_check", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driver_refuses_explicit_te_layers_without_te(driver):
    with pytest.raises(ValueError, match=r"--transformer-impl transformer_engine needs Transformer Engine") as exc:
        driver.parse_args(["--transformer-impl", "transformer_engine", "--fp4-format", "e2m1",
                           "--fp4-recipe", "quartet2"])
    assert "--transformer-impl local" in str(exc.value) and "install TE" in str(exc.value)


def test_driver_defaults_to_local_layers_without_te(driver):
    assert driver.parse_args([]).transformer_impl == "local"
    assert driver.parse_args(["--transformer-impl", "local"]).transformer_impl == "local"
