"""examples/quickstart.py: the same numbers on every x86-64 + AVX2 CPU (fixed thread count, FP32
baseline, pinned CPU kernels), and plain log lines instead of progress bars when not on a TTY."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.fixture(scope="module")
def qs():
    spec = importlib.util.spec_from_file_location("quickstart_under_test", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules; importing pins CPU kernels in os.environ
    with mock.patch.dict(sys.modules, {spec.name: module}), mock.patch.dict(os.environ):
        spec.loader.exec_module(module)
        yield module


def _avx2_linux() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= flags


def test_cpu_defaults_do_not_depend_on_the_machine(qs):
    """FP32 baseline (CPU BF16 kernels differ per ISA) and one thread (not the core count)."""
    args = qs.parse_args([])
    assert args.threads == 1
    assert qs.resolve_dtype(args.dtype, torch.device("cpu")) == torch.float32
    assert qs.resolve_dtype(args.dtype, torch.device("cuda")) == torch.bfloat16
    with mock.patch.object(Path, "read_text", return_value="flags : avx2 fma avx512f avx512_bf16 amx_bf16"):
        assert qs.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert qs.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # still available


@pytest.mark.skipif(not _avx2_linux(), reason="kernels are pinned on x86-64 Linux with AVX2 only")
def test_pin_cpu_kernels_sets_avx2_paths_and_respects_the_user(qs):
    env: dict[str, str] = {}
    assert qs.pin_cpu_kernels(env) == qs.PINNED_CPU_ENV == env
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"].startswith("AVX2")
    mine = {"ATEN_CPU_CAPABILITY": "default"}
    assert qs.pin_cpu_kernels(mine)["ATEN_CPU_CAPABILITY"] == "default"


def test_pin_cpu_kernels_does_nothing_off_x86(qs):
    env: dict[str, str] = {}
    with mock.patch.object(platform, "machine", return_value="arm64"):
        assert qs.pin_cpu_kernels(env) == {} and env == {}


def test_progress_bar_only_on_a_terminal(qs):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert qs.progress_bar_enabled(Tty()) and not qs.progress_bar_enabled(io.StringIO())


def test_run_without_a_tty_logs_lines_not_bars(qs, tmp_path, capsys):
    """Under pytest stderr is not a TTY: no tqdm output at all, one plain line per validation."""
    qs.main(["--steps", "4", "--recipes", "", "--val-batches", "1", "--eval-every", "2", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert "\r" not in out.err and "step/s" not in out.err and "it/s" not in out.err
    assert "FP32: step 2/4, train loss" in out.out and "FP32: step 4/4, train loss" in out.out
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["cpu"]["threads"] == 1 and summary["runs"][0]["name"] == "fp32"
    if qs.PINNED:
        assert summary["cpu"]["pinned"] == qs.PINNED_CPU_ENV
