"""The paper's claims, measured: one row per claim with the effects (mean and 95 % interval over nets), a verdict
(holds / does not hold / inconclusive) and the reason, computed from run folders' metrics.csv and
from the CSVs that `paper.mode_collapse` and `paper.flatness` write.

    python -m paper.claims RUN_FOLDER [RUN_FOLDER ...] [--baseline RUN_FOLDER ...] [--mode-collapse CSV ...] [--flatness CSV ...]
                           [--out DIR] [--into FILE]

The claims, and how each is decided: `experiment.analysis.claims`. Writes `claims.md` (a row per
claim and run: its measures, the verdict and why) and `claims.csv` (a row per measure) into --out.
With `--into FILE` (a markdown file, e.g. paper/README.md) the table also replaces the one between
the lines `<!-- claims: COMMAND -->` and `<!-- /claims -->` there, COMMAND being this command line,
so that the file says how its table was made (and a test can make it again).
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path

from experiment.analysis.claims import Measure, Verdict, measure_claims
from experiment.files import atomic_write_text
from experiment.results import Run
from experiment.files import rows_to_csv
from paper.common import command, markdown_table

COLUMNS = ("claim", "run", "method", "measure", "mean", "ci_low", "ci_high", "count", "per_net", "measure_verdict",
           "verdict", "why")


def number(value: float) -> str:
    """A measured value for the tables: 4 decimals (fixed width to compare by eye), 1 above 100."""
    if not math.isfinite(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def claims_csv(measures: list[Measure], verdicts: list[Verdict]) -> str:
    """A row per measure: its mean, 95 % interval, number of nets and per-net values, its own verdict
    (empty for a number shown for context) and its claim row's verdict and reason."""
    by_key = {(verdict.claim, verdict.run): verdict for verdict in verdicts}
    rows = [{"claim": m.claim, "run": m.run, "method": m.method, "measure": m.measure, "mean": number(m.effect.mean),
             "ci_low": number(m.effect.low), "ci_high": number(m.effect.high), "count": m.effect.count,
             "per_net": ";".join(f"{value:.6g}" for value in m.effect.values), "measure_verdict": m.verdict,
             "verdict": by_key[(m.claim, m.run)].verdict, "why": by_key[(m.claim, m.run)].why}
            for m in measures]
    return rows_to_csv(rows, COLUMNS)


def measure_text(measure: Measure) -> str:
    """'WT NLL − dense, ...: -0.0312 [-0.1210, 0.0586] (n = 2) → inconclusive'."""
    effect = measure.effect
    interval = f" [{number(effect.low)}, {number(effect.high)}]" if effect.has_bounds else ""
    verdict = f" → {measure.verdict}" if measure.verdict else ""
    return f"{measure.method} {measure.measure}: {number(effect.mean)}{interval} (n = {effect.count}){verdict}"


def claims_markdown(measures: list[Measure], verdicts: list[Verdict]) -> str:
    """One table row per (claim, run): its measures (mean [95 % interval] over n nets, and the rule's
    verdict on each effect it judges), the verdict, why."""
    rows = [[f"({verdict.claim})", verdict.run,
             "<br>".join(measure_text(m) for m in measures if (m.claim, m.run) == (verdict.claim, verdict.run)),
             verdict.verdict, verdict.why]
            for verdict in verdicts]
    return "\n".join(markdown_table(["claim", "run", "measured: mean [95 % interval over nets] (n)", "verdict", "why"], rows)) + "\n"


BLOCK = re.compile(r"(?P<start><!-- claims: (?P<command>[^\n]*?) -->\n).*?(?P<end><!-- /claims -->)", re.DOTALL)


def embedded_command(text: str, path: Path) -> list[str]:
    """The arguments of `python -m paper.claims` in the claims block of markdown `text` (file `path`)."""
    match = BLOCK.search(text)
    if match is None:
        raise SystemExit(f"error: {path} has no block '<!-- claims: COMMAND -->' ... '<!-- /claims -->'")
    words = shlex.split(match["command"])
    if words[:3] != ["python", "-m", "paper.claims"]:
        raise SystemExit(f"error: {path}: the claims block's command is not 'python -m paper.claims ...': {match['command']}")
    return words[3:]


def replace_block(text: str, table: str, command: list[str]) -> str:
    """`text` with its claims block holding `table`, made by `python -m paper.claims` with arguments `command`."""
    start = f"<!-- claims: {shlex.join(['python', '-m', 'paper.claims', *command])} -->\n"
    return BLOCK.sub(lambda match: start + table + match["end"], text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each holding config.yaml and metrics.csv)")
    parser.add_argument("--mode-collapse", nargs="*", default=[], metavar="CSV", help="mode_collapse_<run>.csv files")
    parser.add_argument("--flatness", nargs="*", default=[], metavar="CSV", help="flatness_<run>.csv files")
    parser.add_argument("--baseline", nargs="*", default=[], metavar="RUN_FOLDER",
                        help="run folders of dense nets trained to convergence, each compared with the flow runs of its "
                             "dataset and network (claim (a) against a converged dense net)")
    parser.add_argument("--out", default=".", help="folder for claims.md and claims.csv (default: .)")
    parser.add_argument("--into", metavar="FILE", help="markdown file whose claims block gets the table (see above)")
    arguments = parser.parse_intermixed_args(argv)
    measures, verdicts = measure_claims([Run(path) for path in arguments.runs], arguments.mode_collapse, arguments.flatness,
                                       [Run(path) for path in arguments.baseline])
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "claims.md", claims_markdown(measures, verdicts))
    atomic_write_text(out / "claims.csv", claims_csv(measures, verdicts))
    if arguments.into:
        into = Path(arguments.into)
        text = into.read_text()
        embedded_command(text, into)  # the block is there
        atomic_write_text(into, replace_block(text, claims_markdown(measures, verdicts), list(argv if argv is not None else sys.argv[1:])))
    print(claims_markdown(measures, verdicts), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(command(main))
