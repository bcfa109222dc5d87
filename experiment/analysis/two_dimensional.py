"""The 2-D toy models: which runs hold one, and what is computed from them (flow samples, the
paths of points through the ODE).

A run is a 2-D run when its model is a flow on the plane (family "cnf": `cnf_`/`ffjord_l{L}_h{H}`
names, outputSize 2) or a neural-ODE classifier of two-dimensional points (family "node", whose
input dimension is its number of classes, 2).

* Samples of a flow: z ~ N(0, I) from a seeded generator, pushed back through the ODE,
  x = z(0) for dz/dt = f(t, z) solved from t = T to 0 (`CNF.sample`).
* Trajectories: z(t) for t from 0 to T with z(0) = x, through each ODE block in turn, solved with
  the block's own solver, tolerances and (fixed-grid solvers) its training grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torchdiffeq import odeint

from experiment.models import CNF, NeuralODEClassifier, parse_model_name
from experiment.results import Run
from experiment.seeds import seeded_generator


GRID_RATIOS = 4  # prune ratios a sample grid shows by default


def spread_ratios(ratios: list[float], count: int) -> list[float]:
    """`count` entries of the sorted list `ratios`, evenly spread and ending with the largest."""
    ratios = sorted(ratios)
    if count <= 0 or not ratios:
        return []
    if count >= len(ratios):
        return ratios
    positions = np.round(np.linspace(len(ratios) / count, len(ratios), count)).astype(int) - 1
    return [ratios[index] for index in sorted(set(positions.tolist()))]


def two_d_family(run: Run) -> str | None:
    """'cnf' or 'node' for a run of a 2-D toy flow or classifier, else None."""
    network = run.settings.network
    try:
        family = parse_model_name(network.name).family
    except ValueError:
        return None
    if family in ("cnf", "node") and network.output_size == 2:
        return family
    return None


@torch.no_grad()
def sample_flow(model: CNF, num_samples: int, seed: int) -> np.ndarray:
    """`num_samples` samples of the flow: N(0, I) draws of a seeded generator pushed back through the ODE."""
    generator = seeded_generator(seed)
    return model.sample(num_samples, generator).double().numpy()


def fields_of(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.Tensor, object]]:
    """(f(t, z) module, end time T, solver options) of each ODE block of a 2-D model, in order."""
    if isinstance(model, CNF):
        return [(block.field.field, block.end_time.detach(), block.options) for block in model.blocks]
    if isinstance(model, NeuralODEClassifier):
        return [(model.block.field, model.block.end_time.detach(), model.block.options)]
    raise TypeError(f"not a 2-D ODE model: {type(model).__name__}")


@torch.no_grad()
def trajectories(model: torch.nn.Module, x: torch.Tensor, num_times: int = 50) -> torch.Tensor:
    """z(t) of the points `x` at `num_times` times per ODE block from t = 0 to T (blocks one after
    the other), shape [times, N, 2]; solved with each block's own solver and tolerances."""
    paths = []
    z = x
    for func, end_time, options in fields_of(model):
        times = torch.linspace(0.0, float(end_time), num_times, dtype=x.dtype)
        kwargs = dict(method=options.method, atol=options.atol, rtol=options.rtol)
        if options.num_steps is not None:
            steps = options.num_steps  # the same equal-step grid the model was trained with
            kwargs["options"] = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype)}
        path = odeint(lambda t, state: func(t, state), z, times, **kwargs)
        paths.append(path if not paths else path[1:])
        z = path[-1]
    return torch.cat(paths)
