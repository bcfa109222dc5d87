"""The results tree: run folders, crash-safe files and the metrics table loader."""

from experiment.results.table import ResultsTable, load_results, run_dirs
from experiment.results.run import Run
from experiment.config.identity import run_folder, run_id
from experiment.results.tree import RunDir, model_name

__all__ = ["Run", "RunDir", "ResultsTable", "load_results", "model_name", "run_dirs", "run_folder", "run_id"]
