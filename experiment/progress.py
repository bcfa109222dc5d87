"""Where a run stands: which of a plan's jobs are finished (their metrics rows all there), read
from the results tree alone. What the scheduler asks before it runs a job, and what analyses ask of
a run (whether a verdict is on an unfinished run): a module they may import without the training
machinery. A chain under a stop rule is finished once the rule has judged it
(experiment/stopping.py)."""

from __future__ import annotations

from collections import Counter

from experiment.files import DamagedFileError, load_checkpoint
from experiment.jobs import Job, jobs_of
from experiment.plan import Plan
from experiment.report import main_metric
from experiment.results.tree import RunDir, is_failed, model_name
from experiment.stopping import ChainDecision, chain_decision


def is_finished(plan: Plan, run: RunDir, verify: bool = False) -> bool:
    """Is every job of `plan` finished in `run` (with `verify`: and every checkpoint intact)?"""
    return finished_jobs(plan, run, verify) == {job.name for job in jobs_of(plan)}


def finished_jobs(plan: Plan, run: RunDir, verify: bool = False) -> set[str]:
    """The names of the plan's jobs whose metrics rows are all there: one per dense net, one per step
    of a chain. A row is written after its model's checkpoint, so such a job has nothing left to do.
    A job with a failed row is done too (it stopped there), and so is a chain whose dense net failed.
    With `verify` (`--repair`), a job is finished only if every model it recorded also has a
    checkpoint that loads and matches its checksum (`intact_checkpoint`): a checkpoint lost or
    damaged after its row was written (a disk fault, a copy trimmed on purpose) is trained again."""
    rows = plan.planned_rows(run.read_metrics())
    rows_per_job = Counter(Job.of_row(plan.run_id, row).name for row in rows)
    failed = {Job.of_row(plan.run_id, row).name for row in rows if is_failed(row)}
    broken = {Job.of_row(plan.run_id, row).name for row in rows
              if verify and not is_failed(row) and not intact_checkpoint(run, model_name(row))}
    return {job.name for job in jobs_of(plan)
            if job.name not in broken and (
                job.name in failed or (job.dense is not None and job.dense.name in failed)
                or (rows_per_job[job.name] == 1 if job.kind == "dense" else chain_done(plan, rows, job, rows_per_job[job.name])))}


def intact_checkpoint(run: RunDir, name: str) -> bool:
    """Does model `name` have a checkpoint that loads and matches its checksum?"""
    try:
        load_checkpoint(run.checkpoint(name))
    except (FileNotFoundError, DamagedFileError):
        return False
    return True


def chain_done(plan: Plan, rows: list[dict], job: Job, num_rows: int) -> bool:
    """Is the prune chain `job` finished? All its rows are there or, under a stop rule, the rule has
    judged it (it stopped early, or ran every step) and its rows carry the `selected` column; an
    existing run rerun with a rule is gone over again (no training) until they do."""
    if plan.stop_rule is None or not plan.stop_rule.applies_to(job.method):
        return num_rows == len(plan.keep_ratios)
    decision = stop_decision(plan, rows, job.method, job.net, job.repetition)
    if decision is None or not (decision.stopped or decision.judged == len(plan.keep_ratios)):
        return False
    judged = [row for row in chain_rows(plan, rows, job.method, job.net, job.repetition) if row["step"] <= decision.last_step]
    return all(row.get("selected") not in (None, "") for row in judged)


def chain_rows(plan: Plan, rows: list[dict], method: str, net: int, repetition: int) -> list[dict]:
    """The rows of one prune chain of the plan's mode among `rows`."""
    return [row for row in rows
            if (row["mode"], row["method"], row["net"], row["repetition"]) == (plan.mode, method, net, repetition)]


def stop_decision(plan: Plan, rows: list[dict], method: str, net: int, repetition: int) -> ChainDecision | None:
    """The plan's stop rule on one chain's recorded rows (`rows`: the run's planned rows); None without
    a rule for this method, or while the dense net's validation value is not recorded."""
    rule = plan.stop_rule
    if rule is None or not rule.applies_to(method):
        return None
    dense_row = next((row for row in rows if row["method"] == "dense" and row["net"] == net and not is_failed(row)), None)
    return chain_decision(rule, chain_rows(plan, rows, method, net, repetition), dense_row, main_metric(plan.settings.retraining), len(plan.keep_ratios))

