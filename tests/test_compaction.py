"""Compaction: FT-pruned models retrained and evaluated as smaller dense twins.

* the compact twin of a model pruned by FT (one-shot at several ratios, or a cascade of two steps)
  is smaller and gives the masked model's log-densities (Hutchinson with the same seed, exact trace)
  and logits, for MLP fields and for concat-squash and convolutional fields too;
* expanding the twin gives back exactly the masked model's parameters and its FT masks;
* training the twin follows the masked model's training (losses per epoch, final weights);
* `retrain` trains FT models as twins, resumes a twin from its own progress file and a masked
  retraining begun before compaction from the plain one, masked;
* a real CLI cascade: checkpoints and rows keep the full layout, and a run SIGKILLed while a twin
  retrains resumes to the same rows and tensors as an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from experiment.config import Schedule, load_configs, settings_of
from experiment.data.toy import gaussians
from experiment.models import build_model, count_nfe
from experiment.models.multiscale import MultiscaleCNF
from experiment.models.cnf import CNF
from experiment.models.solvers import SolverOptions
from experiment.models.prunable import ChainLayer
from experiment.pruning.compaction import compact, expand
from experiment.pruning.layers import prunable_chains
from experiment.pruning.rules import apply_masks, prune
from experiment.plan import make_plan
from experiment.chain import prepare, retrain
from experiment.training.loop import TrainData, train
from experiment.training.losses import build_loss
from conftest import HANG_TIMEOUT, NODE_BASE, cli_command, cli_env, describe, load_weights, run_cli, the_run_folder, write_yaml

# (name, data dimension): Hutchinson flow, exact-trace flow, classifier, tabular concat-squash flow
MODELS = [("ffjord_l4_h16_sigmoid_da", 2), ("cnf_l3_h16_softplus_da", 2), ("node_l3_h16_tanh_da", 2),
          ("ffjord_l2_hm4_f2_softplus", 3)]
PRUNINGS = [(0.3,), (0.6,), (0.9,), (0.5, 0.8)]  # one-shot FT, and a cascade of two FT steps


# ------------------------------------------------------------------------------------------ helpers


def perturb(model: nn.Module, masks: dict[str, torch.Tensor], seed: int) -> None:
    """Stands in for retraining between cascade steps: every parameter moves a little, masks hold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    apply_masks(model, masks)


def pruned(model: nn.Module, ratios: tuple[float, ...], method: str = "FilterThresNet") -> dict[str, torch.Tensor]:
    """`model` pruned in place by `method` at each ratio in turn (perturbed in between); its masks."""
    masks: dict[str, torch.Tensor] = {}
    for step, ratio in enumerate(ratios):
        if step:
            perturb(model, masks, step)
        masks = prune(model, method, ratio, masks)
    return masks


def new_model(name: str, dim: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, dim).double()


def tiny_multiscale(seed: int = 0) -> MultiscaleCNF:
    """Two scales of ConcatConv2d fields, 8 hidden channels, for 1×4×4 images."""
    torch.manual_seed(seed)
    return MultiscaleCNF(1, 2, SolverOptions(atol=1e-6, rtol=1e-6), hidden=8).double()


@pytest.fixture(scope="module")
def pruned_multiscale() -> tuple[MultiscaleCNF, dict[str, torch.Tensor]]:
    """A tiny multiscale flow after two FT steps, and its masks (read-only for tests)."""
    model = tiny_multiscale()
    return model, pruned(model, (0.4, 0.7))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(7)  # the same Hutchinson noise for every model
    with torch.no_grad():
        return model(x)


def hidden_widths(model: nn.Module) -> list[int]:
    return [layer.width for chain in prunable_chains(model) for layer in chain[:-1]]


def kept_neurons(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[int]:
    return [int(masks[layer.weight].flatten(1).any(dim=1).sum()) for chain in prunable_chains(model) for layer in chain[:-1]]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def row_key(row: dict[str, str]) -> tuple:
    return row["mode"], row["method"], int(row["net"]), int(row["repetition"]), int(row["step"])


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name in expected:
        assert torch.equal(actual[name], expected[name]), f"{what}: {name}"


# ---------------------------------------------------------------------------- outputs and layout


@pytest.mark.parametrize("ratios", PRUNINGS, ids=str)
@pytest.mark.parametrize("name, dim", MODELS, ids=[name for name, _ in MODELS])
def test_twin_is_smaller_and_gives_the_masked_models_outputs(name, dim, ratios):
    model = new_model(name, dim)
    masks = pruned(model, ratios)
    twin = compact(model, masks).model
    assert type(twin) is type(model) and twin.state_dict().keys() == model.state_dict().keys()
    assert hidden_widths(twin) == kept_neurons(model, masks)
    assert all(kept < full for kept, full in zip(hidden_widths(twin), hidden_widths(model)))
    assert sum(p.numel() for p in twin.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(64, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    masked, compacted = outputs(model, x), outputs(twin, x)
    torch.testing.assert_close(compacted, masked, rtol=1e-10, atol=1e-10)
    assert count_nfe(twin) > 0  # the twin's ODE blocks count their evaluations as the model's do


@pytest.mark.slow
def test_conv_field_twin_keeps_the_time_channel_and_the_outputs(pruned_multiscale):
    model, masks = pruned_multiscale
    twin = compact(model, masks).model
    for full_chain, twin_chain in zip(prunable_chains(model), prunable_chains(twin)):
        first, last = full_chain[0].module.weight, full_chain[-1].module.weight
        assert twin_chain[0].module.weight.shape[1] == first.shape[1]  # data channels and time
        assert twin_chain[-1].module.weight.shape[0] == last.shape[0]  # the field's outputs
        for layer, consumer in zip(twin_chain[:-1], twin_chain[1:]):
            assert layer.module.weight.shape[0] < 8
            assert consumer.module.weight.shape[1] == layer.module.weight.shape[0] + 1  # time channel first
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(outputs(twin, x), outputs(model, x), rtol=1e-10, atol=1e-10)


class TimeLastField(nn.Module):
    """f(t, z) = W_2 [tanh(W_1 [z, t] + b_1), t] + b_2: the time read after the neurons, as the
    field declares (its consumer's first input column is a neuron)."""

    def __init__(self, dim: int, width: int, first_neuron_input: int = 0):
        super().__init__()
        self.first, self.second = nn.Linear(dim + 1, width), nn.Linear(width + 1, dim)
        self.first_neuron_input = first_neuron_input

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        time = t.to(z.dtype).expand(z.shape[0], 1)
        return self.second(torch.cat([torch.tanh(self.first(torch.cat([z, time], 1))), time], 1))

    def prunable_chain(self) -> list[ChainLayer]:
        return [ChainLayer(self.first, zero_preserving=True), ChainLayer(self.second, self.first_neuron_input)]


def test_declared_chain_with_the_time_after_the_neurons_is_pruned_and_compacted_around_it():
    torch.manual_seed(0)
    model = CNF([TimeLastField(2, 12)], 2, SolverOptions(atol=1e-8, rtol=1e-8), exact_trace=True).double()
    masks = pruned(model, (0.5,))
    second = model.blocks[0].field.field.second.weight
    assert (masks["blocks.0.field.field.second.weight"][:, -1] == 1).all()  # the time column is no neuron
    twin = compact(model, masks).model
    twin_second = twin.blocks[0].field.field.second.weight
    assert twin_second.shape[1] == hidden_widths(twin)[0] + 1 < second.shape[1]
    assert torch.equal(twin_second[:, -1], second[:, -1])
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(outputs(twin, x), outputs(model, x), rtol=1e-10, atol=1e-10)


def test_a_chain_declared_past_its_consumers_inputs_is_an_error():
    model = CNF([TimeLastField(2, 12, first_neuron_input=2)], 2, SolverOptions(), exact_trace=True)
    with pytest.raises(ValueError, match="declared to read 12 outputs"):
        prunable_chains(model)


@pytest.mark.parametrize("name, dim", MODELS + [("multiscale", 16)], ids=[name for name, _ in MODELS] + ["multiscale"])
def test_expand_gives_back_the_masked_parameters_and_the_ft_masks(name, dim, request):
    if name == "multiscale":
        (model, masks), target = request.getfixturevalue("pruned_multiscale"), tiny_multiscale(seed=1)
    else:
        model, target = new_model(name, dim), new_model(name, dim, seed=1)
        masks = pruned(model, (0.5, 0.8))
    compacted = compact(model, masks)
    # an FT twin has nothing left to mask: every zero of the masks was a removed neuron's
    assert all(bool((mask == 1).all()) for mask in compacted.masks.values())
    # expanded into another initialisation: every entry is written, the dropped ones as zeros
    expanded_masks = expand(compacted, target)
    assert_same_tensors(dict(target.named_parameters()), dict(model.named_parameters()), "parameters")
    assert_same_tensors(expanded_masks, masks, "masks")


def test_twin_of_weight_thresholded_model_drops_dead_neurons_and_keeps_its_zeros_masked():
    model = new_model("ffjord_l4_h16_sigmoid_da", 2)
    masks = pruned(model, (0.9,), method="ThresNet")
    compacted = compact(model, masks)
    assert any(bool((mask == 0).any()) for mask in compacted.masks.values())
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(outputs(compacted.model, x), outputs(model, x), rtol=1e-10, atol=1e-10)
    target = new_model("ffjord_l4_h16_sigmoid_da", 2, seed=1)
    assert_same_tensors(expand(compacted, target), masks, "masks")
    assert_same_tensors(dict(target.named_parameters()), dict(model.named_parameters()), "parameters")


# ---------------------------------------------------------------------------------------- training


def toy_flow_data(dtype: torch.dtype) -> TrainData:
    x, _ = gaussians(640, np.random.default_rng(1))
    x, y = torch.tensor(x, dtype=dtype), torch.zeros(640)
    return TrainData(x[:512], y[:512], x[512:], y[512:], 2)


def toy_classes(dtype: torch.dtype) -> TrainData:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(640, 2, generator=generator, dtype=dtype)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return TrainData(x[:512], y[:512], x[512:], y[512:], 2)


def twin_schedule() -> Schedule:
    """NODE_BASE's training schedule with the optimizer, epochs and batch sizes of this comparison."""
    return replace(settings_of(load_configs(NODE_BASE)[0]).training, optimizer="AdamW",
                   optimizer_kwargs={"lr": 5e-3, "weight_decay": 1e-5}, lr_schedulers=(), start_epoch=0, num_epochs=2,
                   early_stop_epoch=None, batch_size=128, test_batch_size=512)


@pytest.mark.parametrize("name, loss, make_data", [
    ("ffjord_l4_h32_sigmoid_da", "NLLPriorLoss", toy_flow_data),
    ("cnf_l3_h32_sigmoid_da", "NLLPriorLoss", toy_flow_data),
    ("node_l3_h32_tanh_da", "CrossEntropyLoss", toy_classes),
], ids=["ffjord", "cnf", "node"])
def test_training_the_twin_follows_the_masked_training(name, loss, make_data, tmp_path):
    """float32 as in real runs; adjoint gradients (whose error control differs slightly, see
    experiment.pruning.compaction) and Hutchinson noise from the same seeds."""
    torch.manual_seed(0)
    model = build_model(name, 2)
    masks = prune(model, "FilterThresNet", 0.8, {})
    compacted = compact(model, masks)
    data, loss_fn, schedule = make_data(torch.float32), build_loss(loss, {}, 2), twin_schedule()
    masked = train(model, schedule, data, loss_fn, seed=3, progress_file=tmp_path / "masked.pt", masks=masks,
                   progress_bars=False)
    twin = train(compacted.model, schedule, data, loss_fn, seed=3, progress_file=tmp_path / "twin.pt",
                 masks=compacted.masks, progress_bars=False)
    assert len(twin.curve) == len(masked.curve) == 2
    for epoch_twin, epoch_masked in zip(twin.curve, masked.curve):
        for column in ("train_loss", "valid_loss"):
            assert epoch_twin[column] == pytest.approx(epoch_masked[column], rel=1e-4), column
    trained = copy.deepcopy(model)
    assert_same_tensors(expand(compacted, trained), masks, "masks")
    for (name_, expanded), masked_parameter in zip(trained.named_parameters(), model.parameters()):
        torch.testing.assert_close(expanded, masked_parameter, rtol=1e-4, atol=1e-5, msg=name_)
        assert torch.equal(expanded == 0, masked_parameter == 0), name_


def write_node_config(folder: Path, retraining: dict) -> Path:
    """A tiny FT cascade of the classifier on ToyMoons: 1 dense net, 2 ratios."""
    return write_yaml(folder / "config.yaml", {
        "file": str(NODE_BASE),
        "network": {"name": "node_l2_h64_tanh_da", "dataset": "ToyMoons"},
        "training": {"numEpochs": 1, "batchSize": 128},
        "retraining": retraining,
        "experiments": {"mode": "cascade", "numNets": 1, "methods": ["FilterThresNet"],
                        "spacing": [{"type": "manual", "values": [0.5, 0.2]}]},
        "directories": {"results": str(folder / "results"), "training_data": str(folder / "training_data")},
    })


def test_retrain_uses_the_twin_and_resumes_a_masked_retraining_begun_before_compaction(tmp_path):
    config = load_configs(write_node_config(tmp_path, {"numEpochs": 2, "batchSize": 256}))[0]
    experiment = prepare(make_plan(config), progress_bars=False)
    schedule = experiment.settings.retraining
    torch.manual_seed(0)
    model = experiment.new_model()
    masks = prune(model, "FilterThresNet", 0.6, {})
    data, loss = experiment.data_for(schedule), experiment.loss(schedule)

    # no progress file: the twin trains, under its own progress name, and comes back in the full layout
    fresh = copy.deepcopy(model)
    outcome, progress, fresh_masks = retrain(experiment, "FilterThresNet", fresh, masks, "fresh", seed=5, description="")
    assert progress == "fresh_compact" and len(outcome.curve) == 2
    assert_same_tensors(fresh_masks, masks, "masks")
    assert all(torch.equal(p == 0, masks[name] == 0) for name, p in fresh.named_parameters() if name in masks)

    # a masked retraining interrupted after epoch 1, with the progress name of before compaction
    masked = copy.deepcopy(model)
    train(masked, replace(schedule, num_epochs=1), data, loss, seed=5, progress_file=experiment.run.progress("old"),
          masks=masks, progress_bars=False)
    first_epoch = load_weights(experiment.run.progress("old"))["curve"]
    resumed = copy.deepcopy(model)
    outcome, progress, _ = retrain(experiment, "FilterThresNet", resumed, masks, "old", seed=5, description="")
    assert progress == "old" and not experiment.run.progress("old_compact").exists()
    assert outcome.curve[:1] == first_epoch and len(outcome.curve) == 2  # resumed
    assert load_weights(experiment.run.progress("old"))["model"]["block.field.net.0.weight"].shape == (64, 2)  # masked


# ------------------------------------------------------------------------------------ the real CLI


def poll_and_kill(process: subprocess.Popen, results: Path, victim: str, epochs: int) -> int | None:
    """SIGKILLs `process` once `victim`'s twin has a progress file between epochs; the epoch, or None."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        for progress in results.glob(f"*/*/*/progress/{victim}_*_compact.pt"):
            try:
                epoch = load_weights(progress)["epoch"]
            except (FileNotFoundError, RuntimeError, EOFError):
                continue
            if 1 <= epoch < epochs:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return epoch
        time.sleep(0.005)
    return None


@pytest.mark.slow
def test_cli_chain_keeps_the_full_layout_and_a_killed_twin_resumes_to_the_same_rows(tmp_path):
    epochs = 2
    config = write_node_config(tmp_path / "a", {"numEpochs": epochs, "batchSize": 128})
    finished = run_cli(config)
    assert finished.returncode == 0, describe(finished)
    run_a = the_run_folder(tmp_path / "a" / "results")
    rows_a = read_rows(run_a / "metrics.csv")
    assert sorted(map(row_key, rows_a)) == [("cascade", "FilterThresNet", 0, 0, 1), ("cascade", "FilterThresNet", 0, 0, 2),
                                            ("train", "dense", 0, 0, 0)]
    full = build_model("node_l2_h64_tanh_da", 2).state_dict()
    for row in rows_a:
        if row["method"] == "FilterThresNet":
            assert int(row["num_params"]) == 322
            assert abs(float(row["prune_ratio"]) - float(row["target_prune_ratio"])) <= 2.5 / 322 + 1e-9
            checkpoint = load_weights(run_a / "checkpoints" / f"cascade_FilterThresNet_net0_rep0_step{row['step']}.pt")
            assert {name: value.shape for name, value in checkpoint["model"].items()} == {name: value.shape for name, value in full.items()}
            assert all(checkpoint["masks"][name].shape == full[name].shape for name in checkpoint["masks"])
            assert checkpoint["progress"].endswith("_compact")
            for name, mask in checkpoint["masks"].items():
                assert (checkpoint["model"][name][mask == 0] == 0).all()

    # the same run, killed while the second step's twin retrains, then resumed
    config_b = write_node_config(tmp_path / "b", {"numEpochs": epochs, "batchSize": 128})
    victim = "cascade_FilterThresNet_net0_rep0_step2"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(cli_command(config_b), cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            killed_at = poll_and_kill(process, tmp_path / "b" / "results", victim, epochs)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert killed_at is not None, (tmp_path / "killed.log").read_text()[-3000:]
    run_b = the_run_folder(tmp_path / "b" / "results")
    [progress] = list((run_b / "progress").glob(f"{victim}_*_compact.pt"))
    hidden = load_weights(progress)["model"]["block.field.net.0.weight"]
    assert hidden.shape[0] < 64, "the progress file holds the full-size model, not the twin"
    resumed = run_cli(config_b)
    assert resumed.returncode == 0, describe(resumed)
    assert f"retraining {victim}" in resumed.stdout + resumed.stderr
    assert not list((run_b / "progress").glob("*.pt"))

    untimed = lambda rows: sorted(({k: v for k, v in row.items() if k != "train_seconds"} for row in rows), key=row_key)
    assert untimed(read_rows(run_b / "metrics.csv")) == untimed(rows_a)
    for path in sorted((run_a / "checkpoints").glob("*.pt")):
        a, b = load_weights(path), load_weights(run_b / "checkpoints" / path.name)
        for part in ("model", "masks"):
            assert_same_tensors(b[part], a[part], f"{path.name} {part}")
