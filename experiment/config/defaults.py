"""Defaults of config keys that other layers need too (the solvers, the run id), here so that they
import them from the config layer that owns them. This module imports nothing."""

DEFAULT_MAX_STEPS = 10_000  # `network.maxSteps`: steps per solve, far above what a trained model needs
DEFAULT_SOLVER_BACKEND = "auto"  # `network.solverBackend`: experiment.models.solvers.resolve_backend
