"""The ODE solvers behind `experiment.models.ode.ODEBlock`, one backend each, chosen in one place:

* `fused`: dopri5 with the adjoint, field, trace and gradients written out by hand for MLP fields
  (fused.py, on dopri5.py and mlp_tangents.py); the default wherever it applies;
* `torchdiffeq`: torchdiffeq's solvers with its adjoint (torchdiffeq_backend.py);
* `backprop`: torchdiffeq's solvers, gradients by backpropagation through the steps.

`resolve_backend` (options.py) decides which one a block uses from the model (its method, adjoint
or not, its field) and the config's `network.solverBackend`.
"""

from experiment.models.solvers.dopri5 import SolverError
from experiment.models.solvers.options import BACKENDS, SolverOptions, fused_possible, resolve_backend
from experiment.models.solvers.torchdiffeq_backend import odesolve, solver_errors

__all__ = ["BACKENDS", "SolverError", "SolverOptions", "fused_possible", "odesolve", "resolve_backend", "solver_errors"]
