"""The `tf32` key (docs/CONFIG.md): validated, part of the run id only when true (runs made before the
key keep their ids), and applied to torch's TF32 flags in the process that trains, before each job
(experiment/process.py `set_tf32`, called by runner.run_job, through which the main process, the
workers and the torchrun ranks all train). On the CPU the flags have no effect but are still set."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from experiment.config import load_configs
from experiment.results import run_id
from experiment.scheduler import run_experiment


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def flags_restored():
    """Leaves torch's process-wide flags as this test found them, for the tests after it."""
    before = tf32_flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_enters_the_run_id_only_when_true(tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "results")
    (default,) = load_configs(config)
    (off,) = load_configs(config, ["tf32=false"])
    (on,) = load_configs(config, ["tf32=true"])
    assert default["tf32"] is False and on["tf32"] is True
    before_the_key = {key: value for key, value in default.items() if key != "tf32"}  # config.yaml of an older run
    assert run_id(off) == run_id(default) == run_id(before_the_key)
    assert run_id(on) != run_id(default)


@pytest.mark.parametrize("tf32", [True, False])
def test_training_sets_the_tf32_flags_as_configured(tmp_path, tf32, flags_restored):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32  # the opposite, to see them set
    (config,) = load_configs(tiny_config(tmp_path / "tiny.yaml", tmp_path / "results", epochs=1, nets=1),
                             [f"tf32={str(tf32).lower()}"])
    run_experiment(config)
    assert tf32_flags() == (tf32, tf32)
