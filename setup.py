"""Installs the `experiment` package (Sparse Flows reproduction)."""

from pathlib import Path

from setuptools import find_packages, setup

# requirements.txt pins the CPU torch that the README and CI install first; the package itself runs on
# any torch 2.x, so an installed build (e.g. a CUDA one) is kept rather than replaced by pip.
TORCH = "torch>=2.0,<3"

requirements = [
    TORCH if line.strip().startswith("torch==") else line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="sparse-flows",
    version="0.1.0",
    description="Sparse Flows: Pruning Continuous-depth Models (NeurIPS 2021), reproduced",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["experiment", "experiment.*", "paper", "paper.*"]),
    install_requires=requirements,
    entry_points={"console_scripts": ["sparse-flows = experiment.main:main"]},  # = python -m experiment.main
    # GAS is a pandas DataFrame pickle and BSDS300 is HDF5 (experiment/data/tabular.py); submitit
    # submits `--launcher slurm` job arrays (experiment/launcher.py), and the tests run it locally;
    # pandas also serves `ResultsTable.to_pandas` (experiment/results/table.py).
    extras_require={"tabular": ["pandas>=1.5", "h5py>=3.8"], "cluster": ["submitit>=1.5"], "pandas": ["pandas>=1.5"],
                    "test": ["pytest>=7.0", "pytest-xdist>=3.0", "pandas>=1.5", "h5py>=3.8", "submitit>=1.5"]},
)
