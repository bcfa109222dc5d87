"""The jobs of a resolved config (docs/RUNNING.md): one per dense net, then one per prune chain
(method × net × repetition), each chain after the dense net it starts from.

A job is a unit of work one process does under the job's lock (experiment/results/tree.py); its
identity, `{run id}/{job name}`, follows from the config alone, so every process on every machine
names the same job the same way. Which jobs one process runs is chosen here too: all of them, or one
static share (`Shard`) of the jobs of all configs of a command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from experiment.plan import Plan

JobKind = Literal["dense", "chain"]


def dense_name(net: int) -> str:
    return f"dense_net{net}"


def chain_name(mode: str, method: str, net: int, repetition: int) -> str:
    """The prefix shared by the models of one prune chain (their names add `_step{k}`)."""
    return f"{mode}_{method}_net{net}_rep{repetition}"


@dataclass(frozen=True)
class Job:
    """A dense net (`kind` "dense", mode "train", no method) or one prune chain of a run."""

    run_id: str
    kind: JobKind
    net: int
    mode: str = "train"
    method: str | None = None
    repetition: int = 0

    @classmethod
    def dense_net(cls, run_id: str, net: int) -> "Job":
        return cls(run_id, "dense", net)

    @classmethod
    def chain(cls, run_id: str, mode: str, method: str, net: int, repetition: int) -> "Job":
        return cls(run_id, "chain", net, mode, method, repetition)

    @classmethod
    def of_row(cls, run_id: str, row: Mapping) -> "Job":
        """The job that writes a metrics row."""
        if row["method"] == "dense":
            return cls.dense_net(run_id, row["net"])
        return cls.chain(run_id, row["mode"], row["method"], row["net"], row["repetition"])

    @property
    def name(self) -> str:
        """`dense_net{n}`, or `{mode}_{method}_net{n}_rep{r}` (the chain's models add `_step{k}`)."""
        if self.kind == "dense":
            return dense_name(self.net)
        return chain_name(self.mode, self.method, self.net, self.repetition)

    def owns(self, model: str) -> bool:
        """Is `model` (a checkpoint, curve or progress file stem) one of the files this job writes?
        A dense job's are `dense_net{n}`; a chain's `{chain}_step{k}...` (progress files add more)."""
        return model == self.name if self.kind == "dense" else model.startswith(f"{self.name}_step")

    @property
    def id(self) -> str:
        """The same in every process and on every machine."""
        return f"{self.run_id}/{self.name}"

    @property
    def dense(self) -> "Job | None":
        """The dense job a chain starts from (None for a dense job)."""
        return None if self.kind == "dense" else Job.dense_net(self.run_id, self.net)

    def __str__(self) -> str:
        return self.id


def jobs_of(plan: Plan) -> list[Job]:
    """The dense nets, then the chains (method by method, net by net, repetition by repetition: the
    order a single process has always run them in)."""
    dense = [Job.dense_net(plan.run_id, net) for net in plan.nets]
    chains = [Job.chain(plan.run_id, plan.mode, method, net, repetition)
              for method in plan.methods for net in plan.nets for repetition in range(plan.repetitions)]
    return dense + chains


@dataclass(frozen=True)
class Shard:
    """Share `index` of `count` (0 ≤ index < count) of a command's jobs.

    The jobs of all configs are ordered dense first (every dense job in config order, then every
    chain in config order) and dealt out round-robin: job k goes to shard k mod count. Each shard thus
    gets a balanced number of dense nets and of chains, and every shard process computes the same
    split from the same command line, with no coordination.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """`I/N`, e.g. `0/4` … `3/4`."""
        index, slash, count = text.partition("/")
        try:
            if not slash:
                raise ValueError
            numbers = int(index), int(count)
        except ValueError:
            raise ValueError(f"shard {text!r}: expected I/N with integers 0 <= I < N, e.g. 0/4") from None
        return cls(*numbers)

    @classmethod
    def from_slurm(cls, environment: Mapping[str, str] = os.environ) -> "Shard | None":
        """The shard of a SLURM job-array task (None outside a job array): tasks are numbered from
        SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP, SLURM_ARRAY_TASK_COUNT in all."""
        if "SLURM_ARRAY_TASK_ID" not in environment or "SLURM_ARRAY_TASK_COUNT" not in environment:
            return None
        task, first = int(environment["SLURM_ARRAY_TASK_ID"]), int(environment.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(environment.get("SLURM_ARRAY_TASK_STEP", "1"))
        return cls((task - first) // step, int(environment["SLURM_ARRAY_TASK_COUNT"]))

    def select(self, jobs: Sequence[Job]) -> list[Job]:
        ordered = [job for job in jobs if job.kind == "dense"] + [job for job in jobs if job.kind == "chain"]
        return ordered[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
