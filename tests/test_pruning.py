"""The pruning rules (docs/PRUNING.md) on models in memory (no training runs, except one tiny in-process loop).

* WT (`ThresNet`) keeps the largest-magnitude prunable weights between live neurons (one global
  threshold) and removes every parameter without a path to the output (rows, biases of dead neurons);
* FT (`FilterThresNet`) removes whole hidden neurons by L1 row norm, the same fraction per hidden
  layer, taking bias and next-layer input column along, and never touches the field's output neurons;
* both hit the target prune ratio (all parameters counted) within 0.005, one-shot and in a cascade;
* in a cascade the zeros only grow;
* masks are enforced during training by `experiment.training.loop.train`: masked entries stay zero.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from experiment.config import load_configs, settings_of
from experiment.models import build_model
from experiment.pruning.layers import input_offset, prunable_chains
from experiment.pruning.liveness import remove_dead
from experiment.pruning.rules import apply_masks, prune
from experiment.pruning.sparsity import measure_sparsity
from experiment.training.loop import TrainData, train
from experiment.training.losses import build_loss

FLOW = "ffjord_l4_h64_sigmoid_da"  # the paper's default toy flow, 8642 parameters
NODE = "node_l2_h64_tanh_da"  # the paper's default toy classifier, 322 parameters
TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
CASCADE = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98)
NODE_BASE = Path(__file__).resolve().parents[1] / "param" / "toy" / "node" / "base.yaml"
TOLERANCE = 0.005  # docs/PRUNING.md: hit the target PR within 0.5%


# ----------------------------------------------------------------------------------------- helpers


def new_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, 2)


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def prunable_weight_names(model: nn.Module) -> list[str]:
    return [layer.weight for chain in prunable_chains(model) for layer in chain]


def flat(values: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([values[name].flatten() for name in names])


def retrain_like(model: nn.Module, masks: dict[str, torch.Tensor], seed: int) -> None:
    """Stands in for retraining between cascade steps: moves every parameter a little (so that the
    ranking changes), then re-applies the masks as the training loop does after each step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=generator))
    apply_masks(model, masks)


def assert_top_k(before: torch.Tensor, alive: torch.Tensor, kept: torch.Tensor, what: str) -> None:
    """`kept` (bool) is exactly the k = kept.sum() largest entries of `before` among `alive` ones."""
    assert not (kept & ~alive).any(), f"{what}: an already-pruned weight came back"
    removed = alive & ~kept
    k = int(kept.sum())
    assert k > 0, f"{what}: nothing kept"
    if removed.any():
        assert before[kept].min() >= before[removed].max(), (
            f"{what}: a kept |w| ({before[kept].min():.3g}) is below a removed |w| ({before[removed].max():.3g})")
    scores = torch.where(alive, before, torch.full_like(before, -1.0))
    expected = torch.zeros_like(kept)
    expected[torch.topk(scores, k).indices] = True
    assert torch.equal(kept, expected), f"{what}: survivors are not the top-{k} by magnitude"


def hidden_pairs(model: nn.Module):
    """(layer, consumer) for every hidden layer of every chain: the layers FT removes neurons from."""
    return [(layer, consumer) for chain in prunable_chains(model) for layer, consumer in zip(chain[:-1], chain[1:])]



def live_connections(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{weight name: bool mask of the entries that connect a live input to a live output}: a hidden
    neuron is live when some weight of the next layer reads it and it is not silent (it keeps an
    incoming weight or a bias); the field's outputs, data and time inputs are always live."""
    def mask_of(name: str) -> torch.Tensor:
        return masks.get(name, torch.ones_like(dict(model.named_parameters())[name])) > 0

    connections = {}
    for chain in prunable_chains(model):
        live = []
        for layer, consumer in zip(chain[:-1], chain[1:]):
            offset = input_offset(layer, consumer)
            read = mask_of(consumer.weight).transpose(0, 1)[offset:].flatten(1).any(dim=1)
            speaks = mask_of(layer.weight).flatten(1).any(dim=1) | mask_of(layer.bias)
            live.append(read & speaks)
        live.append(torch.ones(chain[-1].width, dtype=torch.bool))
        inputs = torch.ones(chain[0].module.weight.shape[1], dtype=torch.bool)
        for position, layer in enumerate(chain):
            extra = (1,) * (layer.module.weight.dim() - 2)
            connections[layer.weight] = (live[position].view(-1, 1, *extra) & inputs.view(1, -1, *extra)).expand_as(layer.module.weight)
            if position + 1 < len(chain):
                inputs = torch.ones(chain[position + 1].module.weight.shape[1], dtype=torch.bool)
                inputs[input_offset(layer, chain[position + 1]):] = live[position]
    return connections


def assert_no_dead_parameters(model: nn.Module, masks: dict[str, torch.Tensor], what: str) -> None:
    """No unmasked parameter lacks a path to the output: removing dead parameters changes nothing."""
    parameters_now = dict(model.named_parameters())
    cleaned = remove_dead(prunable_chains(model), parameters_now, masks)
    for name, mask in cleaned.items():
        given = masks.get(name, torch.ones_like(mask))
        assert torch.equal(mask > 0, given > 0), f"{what}: {name} keeps {int((given > 0).sum() - (mask > 0).sum())} dead entries"


def assert_global_threshold(model: nn.Module, before: dict[str, torch.Tensor], alive: torch.Tensor,
                            masks: dict[str, torch.Tensor], what: str) -> None:
    """WT's rule: no weight between live neurons was removed while a smaller one was kept, except
    for the few weights that top the count up to the target (0.5% of the parameters, or one small
    neuron's worth on a tiny net)."""
    names = prunable_weight_names(model)
    magnitudes = flat(before, names).abs()
    kept = flat(masks, names) > 0
    assert not (kept & ~alive).any(), f"{what}: an already-pruned weight came back"
    connectable = flat(live_connections(model, masks), names) & alive & ~kept
    if connectable.any():
        threshold = magnitudes[connectable].max()
        below = int((kept & (magnitudes < threshold)).sum())
        slack = max(TOLERANCE * sum(p.numel() for p in before.values()), 3)
        assert below <= slack, f"{what}: {below} kept weights lie below a removed live connection of |w| {threshold:.3g}"
    assert_no_dead_parameters(model, masks, what)

# ------------------------------------------------------------------------------------------------ WT


@pytest.mark.parametrize("name", [FLOW, NODE, "cnf_l3_h32_tanh_da"])
@pytest.mark.parametrize("target", [0.1, 0.5, 0.9, 0.98])
def test_weight_threshold_keeps_the_largest_live_magnitudes(name, target):
    model = new_model(name, seed=1)
    before = parameters(model)
    names = prunable_weight_names(model)
    masks = prune(model, "ThresNet", target, {})
    after = parameters(model)

    survivors = flat(after, names) != 0
    assert torch.equal(survivors, flat(masks, names) > 0), "mask and surviving weights disagree"
    assert_global_threshold(model, before, torch.ones_like(survivors), masks, f"{name} PR {target}")
    # survivors keep their values; the output layer's bias is never pruned
    assert torch.equal(flat(after, names)[survivors], flat(before, names)[survivors])
    for chain in prunable_chains(model):
        output = chain[-1]
        assert torch.equal(after[output.bias], before[output.bias])


def test_weight_threshold_is_one_global_threshold_across_layers():
    """Moving one layer's magnitudes above all others keeps that layer whole: the threshold is global,
    not one per layer."""
    model = new_model(FLOW, seed=2)
    chain = prunable_chains(model)[0]
    with torch.no_grad():
        weight = chain[1].module.weight
        weight.copy_(weight.sign() * (weight.abs() + 1.0))  # every |w| > 1 > every other |w|
    masks = prune(model, "ThresNet", 0.5, {})
    # 4096 weights of the scaled layer, about 4300 parameters survive: every weight of the scaled layer
    # survives that still connects live neurons (those of a neuron left without outgoing weights die)
    scaled = masks[chain[1].weight] > 0
    assert torch.equal(scaled, live_connections(model, masks)[chain[1].weight])
    assert scaled.sum() > 0.9 * scaled.numel()
    assert measure_sparsity(model).prune_ratio == pytest.approx(0.5, abs=TOLERANCE)


def test_weight_threshold_drops_the_bias_of_neurons_without_outgoing_weights():
    model = new_model(FLOW, seed=3)
    net0, net2, net4, net6 = prunable_chains(model)[0]
    dead_first, dead_last, no_input = 5, 7, 9
    with torch.no_grad():
        # neuron 5 of the first hidden layer: all 64 outgoing weights tiny
        net2.module.weight[:, dead_first] = 1e-7 * torch.sign(net2.module.weight[:, dead_first])
        # neuron 7 of the last hidden layer: both outgoing weights (into the output layer) tiny
        net6.module.weight[:, dead_last] = 1e-7
        # neuron 9 of the second hidden layer: all incoming weights tiny, outgoing ones normal
        net2.module.weight[no_input, :] = 1e-7
        for layer in (net0, net2, net4):  # no zero biases to begin with
            layer.module.bias.copy_(layer.module.bias.sign() * (layer.module.bias.abs() + 0.01))
    before = parameters(model)
    masks = prune(model, "ThresNet", 0.03, {})  # removes ~259 parameters: the 194 tiny weights and a few more
    after = parameters(model)

    assert after[net0.bias][dead_first] == 0 and masks[net0.bias][dead_first] == 0
    assert after[net4.bias][dead_last] == 0 and masks[net4.bias][dead_last] == 0
    assert after[net2.bias][no_input] == before[net2.bias][no_input] != 0, "a neuron with outgoing weights lost its bias"
    assert (after[net2.weight][no_input] == 0).all()
    # the rule for every hidden neuron: bias zero iff no outgoing weight survived, else untouched
    for layer, consumer in hidden_pairs(model):
        has_outgoing = (after[consumer.weight] != 0).any(dim=0)
        assert torch.equal(after[layer.bias][has_outgoing], before[layer.bias][has_outgoing])
        assert (after[layer.bias][~has_outgoing] == 0).all()
        assert (masks[layer.bias][~has_outgoing] == 0).all()
    assert torch.equal(after[net6.bias], before[net6.bias])
    assert measure_sparsity(model).prune_ratio == pytest.approx(0.03, abs=TOLERANCE)


# ------------------------------------------------------------------------------------------------ FT


def check_filter_structure(model: nn.Module, before: dict[str, torch.Tensor], masks_before: dict[str, torch.Tensor],
                           masks: dict[str, torch.Tensor], what: str) -> list[int]:
    """Asserts FT's structure on a pruned `model` whose parameters were `before` (with `masks_before`)
    and returns the kept count of every hidden layer."""
    after = parameters(model)
    counts = []
    for chain in prunable_chains(model):
        kept_per_layer = []
        for layer, consumer in zip(chain[:-1], chain[1:]):
            rows = after[layer.weight].flatten(1)
            kept = (rows != 0).any(dim=1)
            removed = ~kept
            # a removed neuron: zero row, zero bias, zero input column of the next layer (and masked)
            assert (after[layer.bias][removed] == 0).all(), f"{what}: removed neuron kept its bias"
            assert (masks[layer.bias][removed] == 0).all() and (masks[layer.weight].flatten(1)[removed] == 0).all()
            assert (after[consumer.weight][:, removed] == 0).all(), f"{what}: removed neuron still feeds the next layer"
            # a kept neuron: non-zero row and its bias untouched
            assert torch.equal(after[layer.bias][kept], before[layer.bias][kept])
            # the kept neurons have the largest L1 row norms (of the rows as they were, among live rows)
            weight_mask = masks_before.get(layer.weight, torch.ones_like(before[layer.weight]))
            norms = (before[layer.weight] * weight_mask).flatten(1).abs().sum(1)
            alive = weight_mask.flatten(1).any(dim=1)
            assert_top_k(norms, alive, kept, f"{what}: {layer.weight} rows")
            counts.append(int(kept.sum()))
            kept_per_layer.append(kept)
        # the weight pattern is exactly kept-outputs × kept-inputs (the first layer's inputs are data)
        inputs = torch.ones(chain[0].module.weight.shape[1], dtype=torch.bool)
        outputs_of_field = torch.ones(chain[-1].module.weight.shape[0], dtype=torch.bool)
        for layer, kept_out in zip(chain, kept_per_layer + [outputs_of_field]):
            pattern = kept_out[:, None] & inputs[None, :]
            assert torch.equal(after[layer.weight] != 0, pattern), f"{what}: {layer.weight} is not whole rows/columns"
            inputs = kept_out
        # the field's output layer keeps all outputs: bias dense, every output row alive
        output = chain[-1]
        assert (after[output.bias] != 0).all() and torch.equal(after[output.bias], before[output.bias])
        assert (after[output.weight] != 0).any(dim=1).all()
    widths = [layer.module.weight.shape[0] for layer, _ in hidden_pairs(model)]
    assert len(set(widths)) == 1  # the models used here have equal hidden widths
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1, f"{what}: kept counts {counts} are not the same fraction"
    return counts


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98])
def test_filter_threshold_removes_whole_neurons_by_l1_norm(target):
    model = new_model(FLOW, seed=4)
    before = parameters(model)
    masks = prune(model, "FilterThresNet", target, {})
    check_filter_structure(model, before, {}, masks, f"{FLOW} PR {target}")


def test_filter_threshold_keeps_at_least_one_neuron_per_layer():
    model = new_model(FLOW, seed=5)
    before = parameters(model)
    masks = prune(model, "FilterThresNet", 0.999, {})
    counts = check_filter_structure(model, before, {}, masks, "PR 0.999")
    assert counts == [1, 1, 1]


def test_filter_threshold_in_a_cascade():
    model = new_model(FLOW, seed=6)
    masks: dict[str, torch.Tensor] = {}
    for step, target in enumerate(CASCADE):
        before, masks_before = parameters(model), copy.deepcopy(masks)
        masks = prune(model, "FilterThresNet", target, masks)
        check_filter_structure(model, before, masks_before, masks, f"cascade step {step} PR {target}")
        retrain_like(model, masks, seed=step)


# ------------------------------------------------------------------------------- achieved prune ratio


def achieved_ratios(name: str, method: str, cascade: bool, seed: int = 7) -> list[tuple[float, float]]:
    dense = new_model(name, seed)
    model, masks, pairs = copy.deepcopy(dense), {}, []
    for step, target in enumerate(TARGETS):
        if not cascade:
            model, masks = copy.deepcopy(dense), {}
        masks = prune(model, method, target, masks)
        pairs.append((target, measure_sparsity(model).prune_ratio))
        if cascade:
            retrain_like(model, masks, seed=100 + step)
            assert measure_sparsity(model).prune_ratio == pytest.approx(pairs[-1][1])  # retraining keeps the zeros
    return pairs


@pytest.mark.parametrize("cascade", [False, True], ids=["one-shot", "cascade"])
@pytest.mark.parametrize("name, method", [(FLOW, "ThresNet"), (NODE, "ThresNet"), (FLOW, "FilterThresNet")])
def test_achieved_prune_ratio_is_within_half_a_percent(name, method, cascade):
    pairs = achieved_ratios(name, method, cascade)
    misses = [(target, round(achieved, 4)) for target, achieved in pairs if abs(achieved - target) > TOLERANCE]
    assert not misses, f"{method} on {name}: (target, achieved) off by more than {TOLERANCE}: {misses}"


def test_filter_threshold_on_a_small_net_is_within_half_a_neuron():
    """One neuron of node_l2_h64 is 5 of 322 parameters, so FT can only be within half of that."""
    granularity = 5 / 322
    for cascade in (False, True):
        for target, achieved in achieved_ratios(NODE, "FilterThresNet", cascade):
            assert abs(achieved - target) <= granularity / 2 + 1e-9, (target, achieved, cascade)


# ------------------------------------------------------------------------------------ cascade growth


@pytest.mark.parametrize("method", ["ThresNet", "FilterThresNet"])
@pytest.mark.parametrize("name", [FLOW, NODE])
def test_masks_only_grow_along_a_cascade(name, method):
    model = new_model(name, seed=8)
    names = prunable_weight_names(model)
    masks: dict[str, torch.Tensor] = {}
    zeros = {key: value == 0 for key, value in parameters(model).items()}
    for step, target in enumerate(CASCADE):
        before = parameters(model)
        new_masks = prune(model, method, target, masks)
        assert set(masks) <= set(new_masks)
        for key, mask in masks.items():
            assert not ((new_masks[key] > 0) & (mask == 0)).any(), f"step {step}: {key} regrew a masked entry"
        new_zeros = {key: value == 0 for key, value in parameters(model).items()}
        for key in zeros:
            assert not (zeros[key] & ~new_zeros[key]).any(), f"step {step}: {key} regrew a zero"
        for key, mask in new_masks.items():
            assert (parameters(model)[key][mask == 0] == 0).all()
        if method == "ThresNet":  # the survivors are the largest of the (retrained) survivors of the last step
            alive = flat(masks, names) > 0 if masks else torch.ones(sum(before[n].numel() for n in names), dtype=torch.bool)
            assert_global_threshold(model, before, alive, new_masks, f"step {step}")
        assert_no_dead_parameters(model, new_masks, f"{method} step {step}")
        masks, zeros = new_masks, new_zeros
        retrain_like(model, masks, seed=step)


# ------------------------------------------------------------------------------ masks during training


def tiny_data(seed: int = 0) -> TrainData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 2, generator=generator)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return TrainData(x[:256], y[:256], x[256:], y[256:], 2)


@pytest.mark.parametrize("method", ["ThresNet", "FilterThresNet"])
def test_training_keeps_masked_entries_zero(method, tmp_path):
    schedule = replace(settings_of(load_configs(NODE_BASE)[0]).retraining, num_epochs=2, batch_size=32,
                       test_batch_size=64, optimizer="Adam", optimizer_kwargs={"lr": 0.05, "weight_decay": 1e-4})
    model = new_model("node_l2_h16_tanh_da", seed=9)
    masks = prune(model, method, 0.6, {})
    assert any((mask == 0).any() for mask in masks.values())
    # a dense copy of the weights to see that the unmasked ones do train
    before = parameters(model)
    # the masks must hold before every solve (training and validation), i.e. after every optimizer
    # step; a solve reads the weights as they are when it starts (the fused solve never calls the layers)
    checks = []

    def masked_entries_are_zero(module, inputs):
        for key, mask in masks.items():
            value = dict(model.named_parameters())[key]
            checks.append(bool((value.detach()[mask == 0] == 0).all()))

    handle = model.register_forward_pre_hook(masked_entries_are_zero)
    try:
        outcome = train(model, schedule, tiny_data(), build_loss("CrossEntropyLoss", {}, 2), seed=1,
                        progress_file=tmp_path / "progress.pt", masks=masks)
    finally:
        handle.remove()
    assert len(outcome.curve) == 2
    assert checks and all(checks), f"{checks.count(False)} of {len(checks)} solves saw a regrown entry"
    after = parameters(model)
    for key, mask in masks.items():
        assert (after[key][mask == 0] == 0).all(), f"{key}: masked entries regrew"
        assert not torch.equal(after[key][mask > 0], before[key][mask > 0]), f"{key}: unmasked entries did not train"
    assert measure_sparsity(model).nonzero_params == sum(int(m.sum()) for m in masks.values()) + sum(
        p.numel() for key, p in model.named_parameters() if key not in masks)
