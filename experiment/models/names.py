"""The network-name grammar (docs/MODELS.md): a model name is parsed into a `ModelSpec`.

    node_l{L}_h{H}_{act}[solver][_high_tol]       neural-ODE classifier
    ffjord_l{L}_h{H}_{act}[solver][_high_tol]     2-D CNF, Hutchinson trace
    cnf_l{L}_h{H}_{act}[solver][_high_tol]        2-D CNF, exact trace
    ffjord_l{NH}_hm{M}_f{F}_{act}                 tabular FFJORD (F blocks of concat-squash fields)
    ffjord_multiscale_{mnist|cifar}               multiscale image FFJORD

    solver := _da | _da_autograd | _{dopri|rk4|euler}_{adjoint|autograd}   (none: dopri5 + adjoint)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIVATIONS = ("sigmoid", "tanh", "softplus", "relu")

# Fixed-grid solvers keep the original code's time grids (torchprune's node/ffjord/cnf models integrate
# over s_span = torch.linspace(0, 1, N)): N points, so N − 1 equal steps over [0, 1] (19, 79, 99).
FIXED_GRID_POINTS = {("rk4", "node"): 20, ("rk4", "cnf"): 20, ("euler", "node"): 80, ("euler", "cnf"): 100}

_MLP = re.compile(
    r"^(?P<family>node|ffjord|cnf)_l(?P<layers>\d+)_h(?P<hidden>\d+)_(?P<act>[a-z]+)"
    r"(?P<solver>_da_autograd|_da|_(?:dopri|rk4|euler)_(?:adjoint|autograd))?"
    r"(?P<high_tol>_high_tol)?$"
)
_TABULAR = re.compile(r"^ffjord_l(?P<layers>\d+)_hm(?P<mult>\d+)_f(?P<blocks>\d+)_(?P<act>[a-z]+)$")
_MULTISCALE = re.compile(r"^ffjord_multiscale_(?P<image>mnist|cifar)$")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model name says.

    family: "node" (classifier), "cnf" (2-D flow; `exact_trace` tells the estimator),
    "tabular" (FFJORD tabular flow) or "multiscale" (FFJORD image flow).
    """

    name: str
    family: str
    activation: str = "softplus"
    num_linear_layers: int = 0  # node, cnf: Linear layers of the MLP field (l{L})
    width: int = 0  # node, cnf: outputs of each hidden Linear layer (h{H})
    num_hidden_layers: int = 0  # tabular: hidden concat-squash layers, NH + 1 layers in all (l{NH})
    width_multiplier: int = 0  # tabular: hidden width in multiples of the data dimension (hm{M})
    num_blocks: int = 1  # stacked CNF blocks (tabular)
    image: str | None = None  # "mnist" | "cifar" (multiscale)
    exact_trace: bool = False
    solver: str = "dopri5"  # "dopri5" | "rk4" | "euler"
    adjoint: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5
    num_steps: int | None = None  # fixed-grid solvers only

    @property
    def is_flow(self) -> bool:
        return self.family != "node"


def parse_model_name(name: str) -> ModelSpec:
    """Parses a network name; raises ValueError saying what is wrong."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if match := _MULTISCALE.match(name):
        return ModelSpec(name, "multiscale", image=match["image"], solver="dopri5", atol=1e-5, rtol=1e-5)
    if match := _TABULAR.match(name):
        _check_activation(name, match["act"])
        layers, mult, blocks = int(match["layers"]), int(match["mult"]), int(match["blocks"])
        if min(layers, mult, blocks) < 1:
            raise ValueError(f"model name {name!r}: l, hm and f must be at least 1")
        return ModelSpec(name, "tabular", activation=match["act"], num_hidden_layers=layers, width_multiplier=mult,
                         num_blocks=blocks, atol=1e-8, rtol=1e-6)
    match = _MLP.match(name)
    if match is None:
        raise ValueError(
            f"unknown model name {name!r}: expected node_l{{L}}_h{{H}}_{{act}}[suffix], "
            f"ffjord_l{{L}}_h{{H}}_{{act}}[suffix], cnf_l{{L}}_h{{H}}_{{act}}[suffix], "
            f"ffjord_l{{NH}}_hm{{M}}_f{{F}}_{{act}} or ffjord_multiscale_{{mnist|cifar}} "
            f"(suffix: _da, _da_autograd, _{{dopri|rk4|euler}}_{{adjoint|autograd}}, optional _high_tol)"
        )
    _check_activation(name, match["act"])
    layers, hidden = int(match["layers"]), int(match["hidden"])
    if layers < 2 or hidden < 1:
        raise ValueError(f"model name {name!r}: need at least 2 layers (l) and 1 hidden unit (h)")
    solver, adjoint = _parse_solver(match["solver"] or "_da")
    is_node = match["family"] == "node"
    tol = 1e-4 if (is_node or match["high_tol"]) else 1e-5
    points = FIXED_GRID_POINTS.get((solver, "node" if is_node else "cnf"))
    return ModelSpec(
        name,
        "node" if is_node else "cnf",
        activation=match["act"],
        num_linear_layers=layers,
        width=hidden,
        exact_trace=match["family"] == "cnf",
        solver=solver,
        adjoint=adjoint,
        atol=tol,
        rtol=tol,
        num_steps=None if points is None else points - 1,
    )


def _check_activation(name: str, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"model name {name!r}: unknown activation {act!r}, expected one of {ACTIVATIONS}")


def _parse_solver(suffix: str) -> tuple[str, bool]:
    if suffix == "_da":
        return "dopri5", True
    if suffix == "_da_autograd":
        return "dopri5", False
    kind, gradient = suffix[1:].split("_")
    return {"dopri": "dopri5"}.get(kind, kind), gradient == "adjoint"
