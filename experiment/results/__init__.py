"""The results tree: run folders, crash-safe files and the metrics table loader."""

from experiment.results.table import ResultsTable, load_results, run_dirs
from experiment.results.tree import RunDir, run_folder, run_id

__all__ = ["RunDir", "ResultsTable", "load_results", "run_dirs", "run_folder", "run_id"]
