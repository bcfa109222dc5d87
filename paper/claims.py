"""The paper's claims, measured: one row per claim with the numbers (mean ± std over nets), a verdict
(holds / does not hold / inconclusive) and the reason, computed from run folders' metrics.csv and
from the CSVs that `paper.mode_collapse` and `paper.flatness` write.

    python -m paper.claims RUN_FOLDER [RUN_FOLDER ...] [--mode-collapse CSV ...] [--flatness CSV ...] [--out DIR]

The claims, and how each is decided: `experiment.analysis.claims`. Writes `claims.md` (a row per
claim and run: its measures, the verdict and why) and `claims.csv` (a row per measure) into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiment.analysis.claims import Measure, Verdict, measure_claims
from experiment.files import atomic_write_text
from experiment.results import Run
from experiment.results.tree import rows_to_csv
from paper.common import markdown_table

COLUMNS = ("claim", "run", "method", "measure", "mean", "std", "count", "verdict", "why")


def claims_csv(measures: list[Measure], verdicts: list[Verdict]) -> str:
    by_key = {(verdict.claim, verdict.run): verdict for verdict in verdicts}
    rows = [{"claim": measure.claim, "run": measure.run, "method": measure.method, "measure": measure.measure,
             "mean": f"{measure.mean:.4f}", "std": f"{measure.std:.4f}", "count": measure.count,
             "verdict": by_key[(measure.claim, measure.run)].verdict, "why": by_key[(measure.claim, measure.run)].why}
            for measure in measures]
    return rows_to_csv(rows, COLUMNS)


def claims_markdown(measures: list[Measure], verdicts: list[Verdict]) -> str:
    """One table row per (claim, run): its measures as 'method measure: mean ± std (n)', the verdict, why."""
    rows = [[f"({verdict.claim})", verdict.run,
             "<br>".join(f"{m.method} {m.measure}: {m.mean:.4f} ± {m.std:.4f} (n = {m.count})"
                         for m in measures if (m.claim, m.run) == (verdict.claim, verdict.run)),
             verdict.verdict, verdict.why]
            for verdict in verdicts]
    return "\n".join(markdown_table(["claim", "run", "measured (mean ± std over n)", "verdict", "why"], rows)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each holding config.yaml and metrics.csv)")
    parser.add_argument("--mode-collapse", nargs="*", default=[], metavar="CSV", help="mode_collapse_<run>.csv files")
    parser.add_argument("--flatness", nargs="*", default=[], metavar="CSV", help="flatness_<run>.csv files")
    parser.add_argument("--out", default=".", help="folder for claims.md and claims.csv (default: .)")
    arguments = parser.parse_intermixed_args(argv)
    measures, verdicts = measure_claims([Run(path) for path in arguments.runs], arguments.mode_collapse, arguments.flatness)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "claims.md", claims_markdown(measures, verdicts))
    atomic_write_text(out / "claims.csv", claims_csv(measures, verdicts))
    print(claims_markdown(measures, verdicts), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
