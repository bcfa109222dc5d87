"""An MLP evaluated by hand together with Jacobian-vector products, and the exact gradient of both.

For f(z) = W_L σ(… σ(W_1 z + b_1) …) + b_L and tangents v_1 … v_K, forward-mode propagation carries
each tangent through the layers next to the value:

    a = W h + b,   h' = σ(a)          (value)
    ȧ = W ḣ,       ḣ' = σ'(a) ⊙ ȧ     (tangent; ḣ = v at the input, ḟ = J v at the output)

Values and tangents share every matrix product (they are stacked along the batch), so f and
K products J v_k cost about (1 + K) evaluations of f. The trace estimate Σ_k v_kᵀ J v_k is then a
dot product — Hutchinson's with K = 1, v ~ N(0, I); exact with v_k the unit vectors.

`vjp` is ordinary backpropagation through that computation, written out: given ∂L/∂f and ∂L/∂ḟ_k it
returns ∂L/∂z and ∂L/∂(W, b). The tangents' path makes the value's gradient pick up second
derivatives:  ∂L/∂ȧ_k = σ'(a) ⊙ ∂L/∂ḣ'_k  and  ∂L/∂a = σ'(a) ⊙ ∂L/∂h' + σ''(a) ⊙ Σ_k ȧ_k ⊙ ∂L/∂ḣ'_k.
No autograd graph is built, which is what makes the adjoint's backward solve cheap: it needs this
gradient at every evaluation, where autograd would differentiate a gradient again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _sigmoid(a: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.sigmoid(a, out=out)
    return value, torch.addcmul(value, value, value, value=-1)  # σ − σ²


def _tanh(a: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.tanh(a, out=out)
    return value, 1 - value * value


def _softplus(a: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return out.copy_(nn.functional.softplus(a)), torch.sigmoid(a)


def _relu(a: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.clamp(a, min=0, out=out), (a > 0).to(a.dtype)


def _second_derivative(activation: str, value: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """σ''(a) from σ(a) and σ'(a)."""
    if activation == "sigmoid":
        return torch.addcmul(slope, value, slope, value=-2)  # σ'(1 − 2σ)
    if activation == "tanh":
        return value.mul(slope).mul_(-2)  # −2 tanh · (1 − tanh²)
    if activation == "softplus":
        return torch.addcmul(slope, slope, slope, value=-1)  # sigmoid'
    return torch.zeros_like(slope)  # relu


@dataclass(frozen=True)
class Activation:
    """An activation by its name in model names: the torch module that builds it and, for the fused
    solve, σ and σ' evaluated together (`values(a, out)`, σ written into `out`)."""

    module: type[nn.Module]
    values: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# The one table of activations: model names say the key (experiment.models.names.ACTIVATIONS).
ACTIVATIONS = {"sigmoid": Activation(nn.Sigmoid, _sigmoid), "tanh": Activation(nn.Tanh, _tanh),
               "softplus": Activation(nn.Softplus, _softplus), "relu": Activation(nn.ReLU, _relu)}


@dataclass(frozen=True)
class MLP:
    """The layers of an MLP: (W, b) per Linear layer and one activation between them."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    activation: str

    @property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """Weights and biases interleaved, the order of `nn.Sequential.parameters()`."""
        return tuple(tensor for pair in zip(self.weights, self.biases) for tensor in pair)


def as_mlp(net: nn.Module) -> MLP | None:
    """The MLP `net` is, if it is an `nn.Sequential` of Linear layers with biases separated by one
    kind of default-configured activation; None otherwise."""
    if not isinstance(net, nn.Sequential) or len(net) < 3 or len(net) % 2 != 1:
        return None
    linears, activations = list(net)[0::2], list(net)[1::2]
    if not all(type(layer) is nn.Linear and layer.bias is not None for layer in linears):
        return None
    kinds = {type(layer) for layer in activations}
    names = [name for name, activation in ACTIVATIONS.items() if {activation.module} == kinds]
    if len(names) != 1:
        return None
    if any(isinstance(layer, nn.Softplus) and (layer.beta != 1 or layer.threshold != 20) for layer in activations):
        return None
    activation = names[0]
    return MLP(tuple(layer.weight for layer in linears), tuple(layer.bias for layer in linears), activation)


@dataclass
class Tape:
    """What `vjp` needs of a forward pass: each layer's input (values and tangents stacked) and,
    per hidden layer, σ(a), σ'(a) and ȧ."""

    inputs: list[torch.Tensor]
    values: list[torch.Tensor]
    slopes: list[torch.Tensor]
    tangent_preactivations: list[torch.Tensor]


def forward(mlp: MLP, z: torch.Tensor, tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Tape]:
    """f(z) [B, D], J v_k [K, B, D] for tangents v [K, B, D] (K may be 0), and the tape for `vjp`."""
    act = ACTIVATIONS[mlp.activation].values
    num_tangents, batch = tangents.shape[0], z.shape[0]
    rows = (1 + num_tangents) * batch
    stacked = torch.cat([z.unsqueeze(0), tangents]).view(rows, -1)
    tape = Tape([], [], [], [])
    last = len(mlp.weights) - 1
    for index, (weight, bias) in enumerate(zip(mlp.weights, mlp.biases)):
        tape.inputs.append(stacked)
        out = torch.mm(stacked, weight.t()).view(1 + num_tangents, batch, -1)
        out[0] += bias
        if index == last:
            return out[0], out[1:], tape
        following = torch.empty_like(out)  # the next layer's input: values, then tangents
        value, slope = act(out[0], following[0])
        torch.mul(out[1:], slope, out=following[1:])
        tape.values.append(value)
        tape.slopes.append(slope)
        tape.tangent_preactivations.append(out[1:])
        stacked = following.view(rows, -1)
    raise ValueError("an MLP needs at least one layer")


def vjp(mlp: MLP, tape: Tape, grad_output: torch.Tensor, grad_tangent_outputs: torch.Tensor
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """∂L/∂z [B, D] and ∂L/∂(W_1, b_1, …, W_L, b_L) for ∂L/∂f = `grad_output` [B, D] and
    ∂L/∂(J v_k) = `grad_tangent_outputs` [K, B, D] at the forward pass recorded in `tape`."""
    num_tangents, batch = grad_tangent_outputs.shape[0], grad_output.shape[0]
    rows = (1 + num_tangents) * batch
    grad = torch.cat([grad_output.unsqueeze(0), grad_tangent_outputs])  # ∂L/∂a, ∂L/∂ȧ_k of the last layer
    parameter_grads: list[torch.Tensor] = []
    for index in range(len(mlp.weights) - 1, -1, -1):
        flat, inputs = grad.view(rows, -1), tape.inputs[index]
        # ∂L/∂W = Σ_rows grad ⊗ input; the product is fastest with the narrow side outermost
        grad_weight = torch.mm(flat.t(), inputs) if inputs.shape[1] >= flat.shape[1] else torch.mm(inputs.t(), flat).t()
        parameter_grads += [grad[0].sum(0), grad_weight]  # b, W (reversed below)
        if index == 0:
            return torch.mm(grad[0], mlp.weights[0]), parameter_grads[::-1]
        grad_hidden = torch.mm(flat, mlp.weights[index]).view(1 + num_tangents, batch, -1)
        value, slope = tape.values[index - 1], tape.slopes[index - 1]
        grad = grad_hidden * slope  # σ' ⊙ ∂L/∂h' for the value and every tangent
        if num_tangents:
            mixed = grad_hidden[1:] * tape.tangent_preactivations[index - 1]
            mixed = mixed[0] if num_tangents == 1 else mixed.sum(0)
            grad[0].addcmul_(_second_derivative(mlp.activation, value, slope), mixed)
    raise ValueError("an MLP needs at least one layer")
