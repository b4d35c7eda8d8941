"""CMA-ES from the `cmaes` library: construction, elite count, and pickling with its RNG."""
from __future__ import annotations

import math
import pickle

import numpy as np

from .config import EvolveConfig


def set_elite_count(opt, mu: int) -> None:
    """cmaes' CMA fixes mu = population // 2; recompute its weights and rates for another mu
    (same formulas as cmaes.CMA.__init__, Hansen's tutorial eq. 49-56)."""
    n, lam = opt._n_dim, opt._popsize
    if mu == opt._mu:
        return
    wp = np.array([math.log((lam + 1) / 2) - math.log(i + 1) for i in range(lam)])
    # log((lam+1)/2) puts the sign change at lam//2; shift so exactly mu weights are positive
    wp = wp - (wp[mu - 1] + wp[mu]) / 2
    mu_eff = np.sum(wp[:mu]) ** 2 / np.sum(wp[:mu] ** 2)
    mu_eff_minus = np.sum(wp[mu:]) ** 2 / np.sum(wp[mu:] ** 2)
    c1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    cmu = min(1 - c1 - 1e-8, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
    min_alpha = min(1 + c1 / cmu, 1 + (2 * mu_eff_minus) / (mu_eff + 2), (1 - c1 - cmu) / (n * cmu))
    pos, neg = np.sum(wp[wp > 0]), np.sum(np.abs(wp[wp < 0]))
    opt._weights = np.where(wp >= 0, wp / pos, min_alpha / neg * wp)
    opt._mu, opt._mu_eff, opt._c1, opt._cmu = mu, mu_eff, c1, cmu
    opt._c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    opt._d_sigma = 1 + 2 * max(0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + opt._c_sigma
    opt._cc = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)


def make_optimizer(cfg: EvolveConfig, dim: int):
    from cmaes import CMA, SepCMA

    mean = np.zeros(dim)
    if cfg.optimizer == "sep":
        return SepCMA(mean=mean, sigma=cfg.sigma, seed=cfg.seed, population_size=cfg.population)
    opt = CMA(mean=mean, sigma=cfg.sigma, seed=cfg.seed, population_size=cfg.population)
    set_elite_count(opt, cfg.mu)
    return opt


def dump_optimizer(opt) -> dict:
    # cmaes drops its RandomState when pickled: keep its state beside it
    return {"pickle": pickle.dumps(opt), "rng": opt._rng.get_state()}


def load_optimizer(blob: dict):
    opt = pickle.loads(blob["pickle"])
    opt._rng.set_state(blob["rng"])
    return opt


def resume_or_start(state_path, start, log=print):
    """(optimiser, generations done): from the state file a run wrote after its last
    generation, or `start()` and 0, so a stopped run goes on here or on another machine."""
    import torch

    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        log(f"resuming at generation {state['generation'] + 1}")
        return load_optimizer(state["optimizer"]), state["generation"]
    return start(), 0


def append_log_row(path, row: dict) -> None:
    """One generation's row of a run's CSV log (the header with the first row)."""
    import csv

    new = not path.exists()
    with path.open("a") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
