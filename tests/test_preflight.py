"""What a run needs from the machine is checked before any data work (issue: a GPU trainer on a machine
without CUDA died after ~11 s of data preparation with Lightning's "No supported gpu backend found!", QLoRA
without bitsandbytes after ~20 s with a transformers ImportError)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch

from exp3rt import CONF_DIR

REPO = CONF_DIR.parent
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def run_cli(module: str, args: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "EXP3RT_ARTIFACTS": str(tmp_path / "artifacts"),
        "EXP3RT_OUTPUTS": str(tmp_path / "outputs"),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=300
    )
    return proc, time.perf_counter() - t0


@no_cuda
@pytest.mark.parametrize("module", ["exp3rt.cli.pipeline", "exp3rt.cli.train"])
def test_a_gpu_trainer_without_cuda_stops_before_data_work_with_a_sentence(module, tmp_path):
    proc, _ = run_cli(module, ["trainer=gpu"], tmp_path)
    assert proc.returncode != 0
    assert "sees none on this machine: train here with trainer=cpu, or trainer=deepspeed_cpu" in proc.stderr
    assert "Traceback" not in proc.stderr and "No supported gpu backend" not in proc.stderr
    assert not (tmp_path / "artifacts" / "data").exists()  # nothing was prepared


@no_cuda
def test_the_gpu_preset_still_dry_runs_here(tmp_path):
    proc, _ = run_cli("exp3rt.cli.pipeline", ["trainer=gpu", "dry_run=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_without_bitsandbytes_stops_before_data_work_and_its_advice_runs(tmp_path):
    from hydra import compose, initialize_config_dir

    from exp3rt.config import ConfigError, validate
    from exp3rt.devices import check_machine

    def cfg(overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return validate(compose(config_name="pipeline", overrides=overrides))

    with pytest.raises(ConfigError, match="needs the bitsandbytes package") as err:
        check_machine(cfg(["student.quantization=4bit"]))
    advice = str(err.value).rsplit(": ", 1)[1]
    assert advice == "student.quantization=null"
    check_machine(cfg(["student.quantization=4bit", advice]))
    proc, _ = run_cli("exp3rt.cli.pipeline", ["student.quantization=4bit"], tmp_path)
    assert proc.returncode != 0 and "needs the bitsandbytes package" in proc.stderr
    assert not (tmp_path / "artifacts" / "data").exists()
