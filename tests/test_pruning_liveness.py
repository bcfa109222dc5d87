"""Pruning keeps only live parameters (docs/PRUNING.md), checked on real cascade checkpoints of the CLI.

Three tiny but real `python -m experiment.main` cascades, each with FilterThresNet (FT) and ThresNet
(WT) over 11 prune ratios from 0.2 to 0.98:

* a toy CNF, ffjord_l4_h64_sigmoid_da (8,642 parameters), on ToyMoons (any 2-D set serves a flow);
* a NODE classifier, node_l2_h128_tanh_da (642 parameters), on ToyMoons;
* the POWER tabular flow, ffjord_l3_hm10_f5_tanh (43,325 parameters), on a tiny POWER file in the
  real MAF format (`{training_data}/maf/power/data.npy`, raw [N, 8]) written here.

Only the first prune step is retrained (`retrainIterations: 1`) and the dense nets train one epoch;
every later step is pruned from the previous step's checkpoint, so all 22 checkpoints per model are
real outputs of the rules, just cheap ones.

For every checkpoint the test rebuilds the model and decides liveness on its own (without
`experiment.pruning.liveness`): a non-zero parameter is live iff it belongs to a neuron with a path
to its field's output through non-zero weights and, for a weight, does not read a neuron whose output
is constant zero. No dead parameter may be left, and the metrics' `prune_ratio` must be
1 − (live parameters)/#parameters, within 0.005 of every target, for both methods on all models.

A unit test checks the forward ("silent") rule of `remove_dead` on hand-made masks, and a self-test
shows the audit below does flag a planted dead parameter.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import PARAM, describe, load_weights, run_cli, the_run_folder, write_yaml
from experiment.models import build_model
from experiment.models.ode import ODEBlock
from experiment.pruning.layers import prunable_chains
from experiment.pruning.liveness import remove_dead

pytestmark = pytest.mark.slow  # trains and prunes every model family

PRUNE_RATIOS = (0.2, 0.36, 0.49, 0.59, 0.67, 0.74, 0.8, 0.85, 0.9, 0.95, 0.98)
KEEP_RATIOS = tuple(round(1.0 - ratio, 2) for ratio in PRUNE_RATIOS)
METHODS = ("FilterThresNet", "ThresNet")
TOLERANCE = 0.005  # the acceptance bound on |achieved − target| prune ratio, for WT and FT alike
# FT on node_l2_h128 (642 parameters): one hidden neuron is 2 inputs + bias + 2 outputs = 5 parameters
# = 0.78%, so the closest live count (5k + 2) is at most 2.5 parameters = 0.39% off: within 0.5%.
# (The paper's default node_l2_h64 has 322 parameters, one neuron 1.55%: there FT can only promise
# half a neuron, 0.78%, which is why this file uses the h128 net.)


@dataclass(frozen=True)
class Case:
    network: str
    base: Path  # the repository config the test config includes
    dataset: str
    output_size: int
    num_params: int
    sections: dict  # extra top-level sections merged over the defaults below


CASES = {
    "toy_cnf": Case("ffjord_l4_h64_sigmoid_da", PARAM / "toy" / "base.yaml", "ToyMoons", 2, 8_642, {}),
    "node": Case("node_l2_h128_tanh_da", PARAM / "toy" / "node" / "base.yaml", "ToyMoons", 2, 642, {}),
    "power": Case("ffjord_l3_hm10_f5_tanh", PARAM / "tabular" / "base.yaml", "Power", 6, 43_325,
                  {"network": {"tolerances": {"atol": 1e-3, "rtol": 1e-3}}, "training": {"lrSchedulers": []}}),
}
POWER_ROWS = 300  # test 30, valid 27, train 243 rows


# ------------------------------------------------------------------------------ the cascade runs


def write_power_file(training_data: Path) -> None:
    """A tiny POWER file where the loader looks for it: raw household data [N, 8] (the last column
    the time) as `{training_data}/maf/power/data.npy`."""
    raw = np.random.default_rng(7).normal(size=(POWER_ROWS, 8)) * np.arange(1, 9) + np.arange(8)
    path = training_data / "maf" / "power" / "data.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, raw)


def run_cascade(case: Case, folder: Path) -> Path:
    """Runs the CLI on a tiny cascade config for `case` and returns its run folder."""
    training_data = folder / "training_data"
    if case.dataset == "Power":
        write_power_file(training_data)
    content = {
        "file": str(case.base),
        "network": {"name": case.network, "dataset": case.dataset, "outputSize": case.output_size},
        "training": {"numEpochs": 1, "batchSize": 1024, "testBatchSize": 1024},
        "retraining": {"numEpochs": 1},
        "experiments": {"mode": "cascade", "numNets": 1, "methods": list(METHODS), "retrainIterations": 1,
                        "spacing": [{"type": "manual", "values": list(KEEP_RATIOS)}]},
        "directories": {"results": str(folder / "results"), "training_data": str(training_data)},
    }
    for section, values in case.sections.items():
        content[section] = {**content.get(section, {}), **values}
    config = write_yaml(folder / "config.yaml", content)
    process = run_cli(config, cwd=folder)
    assert process.returncode == 0, describe(process)
    return the_run_folder(folder / "results")


@pytest.fixture(scope="module")
def toy_cnf_run(tmp_path_factory):
    return run_cascade(CASES["toy_cnf"], tmp_path_factory.mktemp("toy_cnf"))


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    return run_cascade(CASES["node"], tmp_path_factory.mktemp("node"))


@pytest.fixture(scope="module")
def power_run(tmp_path_factory):
    return run_cascade(CASES["power"], tmp_path_factory.mktemp("power"))


def metrics_rows(run: Path) -> dict[tuple[str, int], dict[str, str]]:
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    keyed = {(row["method"], int(row["step"])): row for row in rows}
    assert len(keyed) == len(rows) == 1 + len(METHODS) * len(PRUNE_RATIOS), sorted(keyed)
    return keyed


def checkpoint(run: Path, method: str, step: int) -> dict:
    return load_weights(run / "checkpoints" / f"cascade_{method}_net0_rep0_step{step}.pt")


# ------------------------------------------------------- liveness, decided independently of the code


@dataclass(frozen=True)
class Neurons:
    """A layer of a field, found from the model's structure: its weight (row j = neuron j), bias and
    further per-neuron vectors (a concat-squash layer's time gate a, b and shift c)."""

    weight: str
    bias: str | None
    per_neuron: tuple[str, ...]
    zero_preserving: bool  # activation(0) == 0 after this layer


def field_layers(model: nn.Module, activation: str) -> list[list[Neurons]]:
    """One list per ODE block: its field's Linear layers in forward order (the last is the output)."""
    names = {id(module): name for name, module in model.named_modules()}
    parameters = dict(model.named_parameters())
    zero_preserving = bool(getattr(torch, activation)(torch.zeros(1)).item() == 0.0)
    fields = []
    for block in model.modules():
        if not isinstance(block, ODEBlock):
            continue
        layers = []
        for module in block.field.modules():
            if not isinstance(module, nn.Linear):
                continue
            name = names[id(module)]
            parent = name.rsplit(".", 1)[0]
            gate = tuple(f"{parent}.time.{vector}" for vector in ("gate_weight", "gate_bias", "shift_weight"))
            layers.append(Neurons(f"{name}.weight", f"{name}.bias" if module.bias is not None else None,
                                  gate if all(entry in parameters for entry in gate) else (), zero_preserving))
        fields.append(layers)
    return fields


@dataclass
class Audit:
    live: int  # non-zero parameters that can influence the output
    dead: list[str]  # descriptions of non-zero parameters that cannot
    pathless: int  # hidden neurons without a path to the output


def audit(model: nn.Module, activation: str) -> Audit:
    """Counts live parameters of `model` from first principles and lists every dead non-zero one.

    Forward: a hidden neuron's output is constant zero if no non-zero weight reads a non-constant
    input and its bias and per-neuron vectors are zero, under an activation with act(0) = 0.
    Backward: output neurons have a path; a hidden neuron has one iff its output is not constant zero
    and a non-zero weight of the next layer, in the row of a neuron that has a path, reads it. Inputs
    that come before the previous layer's outputs (a concatenated time channel) are never neurons.
    A non-zero parameter is dead if it is in the row, bias or per-neuron vectors of a neuron without
    a path, or a weight reading a constant-zero neuron."""
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    nonzero = {name: p != 0 for name, p in parameters.items()}
    dead_masks = {name: torch.zeros_like(mask) for name, mask in nonzero.items()}
    pathless = 0
    for layers in field_layers(model, activation):
        widths = [parameters[layer.weight].shape[0] for layer in layers]
        offsets = [0] + [parameters[layers[l].weight].shape[1] - widths[l - 1] for l in range(1, len(layers))]

        # forward: constant-zero outputs
        silent: list[torch.Tensor] = []
        for l, layer in enumerate(layers):
            reads = torch.ones(parameters[layer.weight].shape[1], dtype=torch.bool)
            if l > 0:
                reads[offsets[l]:offsets[l] + widths[l - 1]] = ~silent[l - 1]
            carrying = (nonzero[layer.weight] & reads[None, :]).any(dim=1)
            for name in (layer.bias, *layer.per_neuron):
                if name:
                    carrying |= nonzero[name]
            is_hidden = l < len(layers) - 1
            silent.append(~carrying & layer.zero_preserving & is_hidden)
            # weights reading a constant-zero neuron are dead
            dead_masks[layer.weight] |= nonzero[layer.weight] & ~reads[None, :]

        # backward: paths to the output
        path = [torch.ones(widths[-1], dtype=torch.bool)]
        for l in range(len(layers) - 2, -1, -1):
            consumer = nonzero[layers[l + 1].weight][:, offsets[l + 1]:offsets[l + 1] + widths[l]]
            path.insert(0, (consumer & path[0][:, None]).any(dim=0) & ~silent[l])
        for layer, has_path in zip(layers, path):
            pathless += int((~has_path).sum())
            dead_masks[layer.weight] |= nonzero[layer.weight] & ~has_path[:, None]
            for name in (layer.bias, *layer.per_neuron):
                if name:
                    dead_masks[name] |= nonzero[name] & ~has_path

    dead = [f"{name}: {int(mask.sum())} dead non-zero entries" for name, mask in dead_masks.items() if mask.any()]
    live = sum(int((nonzero[name] & ~dead_masks[name]).sum()) for name in parameters)
    return Audit(live=live, dead=dead, pathless=pathless)


def rebuilt(case: Case, saved: dict) -> nn.Module:
    model = build_model(case.network, case.output_size)
    model.load_state_dict(saved["model"])
    return model


def activation_of(case: Case) -> str:
    return next(part for part in case.network.split("_") if part in ("sigmoid", "tanh", "softplus", "relu"))


# ------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", list(CASES))
def test_pruned_checkpoints_keep_no_parameter_without_a_path_to_the_output(model, method, request):
    case, run = CASES[model], request.getfixturevalue(f"{model}_run")
    pathless_at_end = 0
    for step, keep in enumerate(KEEP_RATIOS, start=1):
        saved = checkpoint(run, method, step)
        assert saved["method"] == method and saved["keep_ratios"] == pytest.approx(list(KEEP_RATIOS[:step]))
        network = rebuilt(case, saved)
        parameters = dict(network.named_parameters())
        assert sum(p.numel() for p in parameters.values()) == case.num_params
        for name, mask in saved["masks"].items():
            assert set(mask.unique().tolist()) <= {0.0, 1.0}, name
            assert not parameters[name].detach()[mask == 0].any(), f"step {step}: {name} is non-zero where masked"
        result = audit(network, activation_of(case))
        assert not result.dead, f"{model} {method} step {step} (PR {1 - keep:.2f}): {result.dead}"
        pathless_at_end = result.pathless
    # the check is not vacuous: at PR 0.98 many hidden neurons have lost every path to the output
    assert pathless_at_end > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", list(CASES))
def test_achieved_prune_ratio_counts_live_parameters_and_is_on_target(model, method, request):
    case, run = CASES[model], request.getfixturevalue(f"{model}_run")
    rows = metrics_rows(run)
    assert len(PRUNE_RATIOS) >= 10 and max(PRUNE_RATIOS) == 0.98
    errors = []
    for step, target in enumerate(PRUNE_RATIOS, start=1):
        row = rows[(method, step)]
        assert float(row["target_prune_ratio"]) == pytest.approx(target)
        assert int(row["num_params"]) == case.num_params
        assert int(row["epochs"]) == (1 if step == 1 else 0)  # retrainIterations: 1
        live = audit(rebuilt(case, checkpoint(run, method, step)), activation_of(case)).live
        assert int(row["nonzero_params"]) == live, f"step {step}: the row counts {row['nonzero_params']}, live {live}"
        achieved = float(row["prune_ratio"])
        assert achieved == pytest.approx(1.0 - live / case.num_params, abs=1e-12)
        errors.append(achieved - target)
    worst = max(range(len(errors)), key=lambda index: abs(errors[index]))
    assert abs(errors[worst]) <= TOLERANCE, (
        f"{model} {method}: PR {PRUNE_RATIOS[worst] + errors[worst]:.4f} for target {PRUNE_RATIOS[worst]}; "
        f"errors {[round(error, 4) for error in errors]}")


def test_audit_flags_a_planted_dead_parameter(node_run):
    """The audit is not blind: reviving the bias of a neuron that has lost its outputs, or an output
    weight reading a neuron FT removed, makes it report a dead parameter."""
    case = CASES["node"]
    for method in METHODS:
        network = rebuilt(case, checkpoint(node_run, method, len(PRUNE_RATIOS)))
        (hidden, output), = field_layers(network, "tanh")
        parameters = dict(network.named_parameters())
        without_path = ~(parameters[output.weight] != 0).any(dim=0)
        j = int(without_path.nonzero()[0])
        with torch.no_grad():
            parameters[hidden.bias][j] = 0.5
        assert audit(network, "tanh").dead == [f"{hidden.bias}: 1 dead non-zero entries"]
        with torch.no_grad():
            parameters[hidden.bias][j] = 0.0
            parameters[hidden.weight][j] = 0.0
            parameters[output.weight][0, j] = 0.5  # reads a neuron whose output is tanh(0) = 0
        assert audit(network, "tanh").dead == [f"{output.weight}: 1 dead non-zero entries"]


@pytest.mark.parametrize("activation, removed", [("tanh", True), ("sigmoid", False)])
def test_a_silent_neuron_loses_its_outgoing_weights_only_if_the_activation_keeps_zero(activation, removed):
    """node_l3_h4: 2 → 4 → 4 → 2. Hidden neuron 1 of the first hidden layer has all incoming weights
    and its bias masked. Under tanh its output is tanh(0) = 0, so the weights reading it can never
    matter and remove_dead masks them; under sigmoid it outputs σ(0) = 0.5, a constant that does
    reach the output, so everything is kept. Nothing else changes in either case."""
    model = build_model(f"node_l3_h4_{activation}_da", 2)
    (chain,) = prunable_chains(model)
    first, second, output = chain
    parameters = dict(model.named_parameters())
    masks = {name: torch.ones_like(p) for name, p in parameters.items()}
    masks[first.weight][1] = 0.0
    masks[first.bias][1] = 0.0
    # Neuron 2 of the second hidden layer reads only neuron 1 of the first, and has no bias: under
    # tanh it falls silent once that column goes, so its outgoing column goes too (the rule recurses).
    masks[second.weight][2] = 0.0
    masks[second.weight][2, 1] = 1.0
    masks[second.bias][2] = 0.0

    result = remove_dead([chain], parameters, masks)

    expected = {name: mask.clone() for name, mask in masks.items()}
    if removed:
        expected[second.weight][:, 1] = 0.0  # every weight reading first-layer neuron 1
        expected[output.weight][:, 2] = 0.0  # every weight reading second-layer neuron 2
    for name in expected:
        assert torch.equal(result.get(name, torch.ones_like(parameters[name])), expected[name]), name
    # the reads of the silent neuron: all gone under tanh, all kept under sigmoid
    assert bool(result[second.weight][:, 1].any()) is not removed
    assert bool(result[output.weight][:, 2].any()) is not removed
