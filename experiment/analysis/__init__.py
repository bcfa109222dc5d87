"""The analyses of trained runs that the `paper/` scripts draw and tabulate, as a library: typed
inputs, rows and arrays out, no command lines and no figures.

* `hessian`: the Hessian of a loss restricted to a model's surviving parameters, Lanczos, stochastic
  Lanczos quadrature and the spectral quantities (λ_max, trace, κ, density);
* `flatness`: those quantities for a run's dense and pruned nets, with the random-subset and
  same-support controls and λ_max over several data subsets;
* `mode_collapse`: the modes of a 2-D flow's training mixture and how a model's samples cover them;
* `two_dimensional`: which runs are 2-D toy runs, flow samples and ODE trajectories of their models;
* `prune_potential`: the sparsest pruned point within δ of the dense nets;
* `references`: what pruned models are compared with besides the dense nets: the NoPrune control at
  the same step (per net) and the test NLL of the Gaussian mixture fitted to the training split;
* `claims`: the paper's claims measured from the runs and the tables above, with verdicts.
"""
