"""Models built from their names (docs/MODELS.md). Every model is an ordinary `nn.Module` whose forward
returns per-sample log-densities (flows) or logits (classifiers)."""

from __future__ import annotations

import torch
from torch import nn

from experiment.config.defaults import DEFAULT_MAX_STEPS, DEFAULT_SOLVER_BACKEND
from experiment.models.cnf import CNF
from experiment.models.initialisation import initialise_parameters
from experiment.models.mlp import AutonomousField, mlp
from experiment.models.multiscale import multiscale_flow
from experiment.models.names import ModelSpec, parse_model_name
from experiment.models.node import NeuralODEClassifier
from experiment.models.ode import ODEBlock, count_nfe, solver_backend, solver_errors, solver_options
from experiment.models.solvers import SolverError, SolverOptions
from experiment.models.tabular import tabular_flow

__all__ = ["build_model", "parameter_count", "parse_model_name", "ModelSpec", "CNF", "NeuralODEClassifier", "ODEBlock", "SolverError",
           "count_nfe", "solver_backend", "solver_errors", "solver_options"]


def build_model(name: str, output_size: int, atol: float | None = None, rtol: float | None = None,
                max_steps: int = DEFAULT_MAX_STEPS, generator: torch.Generator | None = None,
                backend: str = DEFAULT_SOLVER_BACKEND) -> nn.Module:
    """The model called `name` for data of dimension (flows) or number of classes (classifiers)
    `output_size`; `atol`/`rtol` override the tolerances the name implies; an adaptive solve of more
    than `max_steps` steps raises SolverError; `backend` asks for a solver backend ("auto": the one
    `experiment.models.solvers.resolve_backend` picks). Its parameters are drawn from `generator`
    (`initialise_parameters`: the values the constructors would draw from the global generator
    seeded alike); None: the constructors' own draws from the global default generator."""
    model = _construct(name, output_size, atol, rtol, max_steps, backend)
    if generator is not None:
        initialise_parameters(model, generator)
    return model


def _construct(name: str, output_size: int, atol: float | None, rtol: float | None, max_steps: int,
               backend: str) -> nn.Module:
    """The model called `name`, as its constructors initialise it (see `build_model`)."""
    spec = parse_model_name(name)
    options = SolverOptions(
        method=spec.solver,
        adjoint=spec.adjoint,
        atol=spec.atol if atol is None else atol,
        rtol=spec.rtol if rtol is None else rtol,
        num_steps=spec.num_steps,
        max_steps=max_steps,
        backend=backend,
    )
    if spec.family in ("node", "cnf"):
        field = AutonomousField(mlp(output_size, spec.width, spec.num_linear_layers, spec.activation))
        if spec.family == "node":
            return NeuralODEClassifier(field, options)
        return CNF([field], output_size, options, exact_trace=spec.exact_trace)
    if spec.family == "tabular":
        return tabular_flow(spec, output_size, options)
    if spec.family == "multiscale":
        return multiscale_flow(spec.image, output_size, options)  # output_size: C·H·W (or C)
    raise NotImplementedError(f"model family {spec.family!r} ({name}) is not built yet")


def parameter_count(name: str, output_size: int) -> int:
    """The number of parameters of model `name` for `output_size`, counted on torch's meta device
    (shapes without storage: a model of any size is counted without allocating it)."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in _construct(name, output_size, None, None, DEFAULT_MAX_STEPS,
                                                                  DEFAULT_SOLVER_BACKEND).parameters())
