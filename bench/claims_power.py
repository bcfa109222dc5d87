"""How often the claims' rule says "holds" for claim (a) at a run's noise, by number of nets: its
false-positive rate (no effect of pruning) and its power against effects of a few thousandths of a
nat, from simulated runs (`experiment.analysis.claims.simulate_improvement_claim`).

    python bench/claims_power.py [RUN_FOLDER] [--effects 0.003 0.005 0.008] [--nets 2 3 4 6 8 10] [--runs 2000]

RUN_FOLDER (default: the committed Gaussians flow, paper/reproduction/flow_gaussians) gives the
noise: per pruning method, the between-net and within-net standard deviations of its test NLL minus
the NoPrune control's over the moderate steps; the simulation uses the larger of the methods'.
"""

from __future__ import annotations

import argparse

import numpy as np

from experiment.analysis.claims import improvement_noise, is_moderate, simulate_improvement_claim
from experiment.results import Run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="paper/reproduction/flow_gaussians")
    parser.add_argument("--effects", type=float, nargs="+", default=[0.003, 0.005, 0.008], help="WT − NoPrune effects (nats)")
    parser.add_argument("--nets", type=int, nargs="+", default=[2, 3, 4, 6, 8, 10])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per cell")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    run = Run(arguments.run)
    noise = improvement_noise(run)
    if not noise:
        raise SystemExit(f"{arguments.run}: no method with NoPrune rows at every moderate step in two nets or more")
    for name, (between, within) in noise.items():
        print(f"{name} − NoPrune over PR ≤ 0.8: between-net sd {between:.4f}, step-to-step sd {within:.4f} nats")
    steps = len({row["step"] for row in run.rows if row["method"] == "NoPrune" and is_moderate(float(row["step_prune_ratio"]))})
    between, within = max(noise.values(), key=lambda pair: pair[0] ** 2 + pair[1] ** 2 / steps)
    generator = np.random.default_rng(arguments.seed)
    print(f"\nsimulated: {steps} moderate steps, between {between:.4f}, within {within:.4f}; "
          f"{arguments.runs} runs per cell; share of runs in which the rule says 'holds'")
    header = f"{'nets':>5} {'no effect':>10} " + " ".join(f"{f'WT −{effect:g}':>10}" for effect in arguments.effects)
    print(header)
    for nets in arguments.nets:
        null, _ = simulate_improvement_claim(between, within, nets, steps, 0.0, arguments.runs, generator)
        found = [simulate_improvement_claim(between, within, nets, steps, -effect, arguments.runs, generator)[1]
                 for effect in arguments.effects]
        print(f"{nets:>5} {null:>10.3f} " + " ".join(f"{share:>10.3f}" for share in found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
