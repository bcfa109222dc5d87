"""FFJORD's tabular flow (docs/MODELS.md): `ffjord_l{NH}_hm{M}_f{F}_{act}`.

F stacked CNF blocks over data of dimension D. Each block's vector field f(t, z) is a stack of
concat-squash layers D→H, (NH−1)×(H→H), H→D with H = M·D and the activation after every layer but
the last. A concat-squash layer lets the field depend on time:

    out = Linear(x) ⊙ σ(a·t + b) + c·t

with the main `nn.Linear(d_in, d_out)` (weight and bias) and, per output, a gate weight a, gate bias
b and time-bias weight c. Parameters per layer: d_in·d_out + d_out + 2·d_out + d_out. Every block
also learns its end time T = τ² (τ initialised to 1), and the trace is Hutchinson's estimate; the
solver is dopri5 with adjoint gradients at atol 1e-8, rtol 1e-6 unless overridden.

Pruning (docs/PRUNING.md) touches only the main Linear layers: the field declares them as its prunable
chain (`ConcatSquashField.prunable_chain`), in forward order, the last being the output layer, each
with its a, b, c as companions of its outputs, removed with an output that can no longer reach the
field's.

Initialisation: the main Linear keeps PyTorch's default; a, b and c are drawn uniformly from
[−1, 1], which is what PyTorch's default gives the weight and bias of an `nn.Linear(1, d_out)`
(bound 1/√fan_in with fan_in = 1), i.e. FFJORD's `_hyper_gate` / `_hyper_bias` layers.
"""

from __future__ import annotations

import torch
from torch import nn

from experiment.models.cnf import CNF
from experiment.models.mlp import LayerStack
from experiment.models.solvers.mlp_tangents import ACTIVATIONS
from experiment.models.names import ModelSpec
from experiment.models.solvers import SolverOptions
from experiment.models.prunable import ChainLayer


class TimeGate(nn.Module):
    """The time-dependent gate σ(a·t + b) and shift c·t of a concat-squash layer, one (a, b, c) per
    output: three vectors, FFJORD's Linear(1, d_out) maps from t written out."""

    def __init__(self, features: int):
        super().__init__()
        self.gate_weight = nn.Parameter(torch.empty(features))  # a
        self.gate_bias = nn.Parameter(torch.empty(features))  # b
        self.shift_weight = nn.Parameter(torch.empty(features))  # c
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """a, b, then c drawn from U(−1/√1, 1/√1) = U(−1, 1), as nn.Linear(1, features) initialises its
        weight and bias, from `generator` (None: the global default generator)."""
        for parameter in (self.gate_weight, self.gate_bias, self.shift_weight):
            nn.init.uniform_(parameter, -1.0, 1.0, generator=generator)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate, shift), each of shape [features], for a scalar time t."""
        t = t.to(self.gate_weight.dtype)
        return torch.sigmoid(self.gate_weight * t + self.gate_bias), self.shift_weight * t


class ConcatSquashLinear(nn.Module):
    """out = linear(x) ⊙ σ(a·t + b) + c·t."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.time = TimeGate(out_features)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate, shift = self.time(t)
        return self.linear(x) * gate + shift

    def chain_layer(self) -> ChainLayer:
        """`linear` in a prunable chain: output j's a_j, b_j, c_j live and die with it. Not declared
        zero-preserving (though it is for tanh and relu): pruning has never applied its "silent
        neuron" rule to concat-squash fields, and starting now would change the masks of existing runs."""
        return ChainLayer(self.linear, companions=(self.time.gate_weight, self.time.gate_bias, self.time.shift_weight))


class ConcatSquashField(LayerStack):
    """f(t, z): concat-squash layers D→H, (NH−1)×(H→H), H→D, the activation after all but the last."""

    def __init__(self, dim: int, hidden: int, num_hidden_layers: int, activation: str):
        widths = [dim] + [hidden] * num_hidden_layers + [dim]
        super().__init__((ConcatSquashLinear(width_in, width_out) for width_in, width_out in zip(widths[:-1], widths[1:])),
                         ACTIVATIONS[activation].module())

    def prunable_chain(self) -> list[ChainLayer]:
        """Every layer's main Linear, its time gate as companions."""
        return [layer.chain_layer() for layer in self.layers]


def tabular_flow(spec: ModelSpec, dim: int, options: SolverOptions) -> CNF:
    """The FFJORD tabular flow for `spec` (family "tabular") over data of dimension `dim`:
    `spec.num_blocks` CNF blocks with learnable end times and Hutchinson's trace estimator."""
    if spec.family != "tabular":
        raise ValueError(f"{spec.name!r} is not a tabular FFJORD model")
    fields = [ConcatSquashField(dim, spec.width_multiplier * dim, spec.num_hidden_layers, spec.activation) for _ in range(spec.num_blocks)]
    return CNF(fields, dim, options, exact_trace=False, learn_end_time=True)
