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


def checkpoint_optimizer(opt) -> tuple[dict, object]:
    """The optimiser's saved form, and the optimiser restored from it, which the run goes on with.

    cmaes pickles its covariance as one triangle, so the live matrix and the saved one can differ
    in the last bits; a run that went on with the live one would drift away from a run resumed
    from the file, by an amount that depends on where it was killed. Going on from what was
    written makes an uninterrupted run and a resumed one the same computation."""
    blob = dump_optimizer(opt)
    return blob, load_optimizer(blob)


def save_run_state(path, payload: dict) -> None:
    """A surrogate run's state file (torch.save format), replaced atomically: a kill while
    writing leaves the previous generation's state, never a torn file."""
    import io

    import torch

    from .records import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def resume_or_start(state_path, start, log=print, log_path=None):
    """(optimiser, generations done): from the state file a run wrote after its last
    generation, or `start()` and 0, so a stopped run goes on here or on another machine.

    The log is written just before the state; a kill between the two leaves a row the state
    does not know. `log_path` is then cut back to the state's generation, so the resumed run
    neither repeats nor skips a row."""
    import torch

    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        log(f"resuming at generation {state['generation'] + 1}")
        if log_path is not None:
            trim_log(log_path, state["generation"])
        return load_optimizer(state["optimizer"]), state["generation"]
    if log_path is not None:
        trim_log(log_path, 0)
    return start(), 0


def trim_log(path, generations: int) -> None:
    """Keep the CSV log's rows of generations 1..`generations` (atomic rewrite)."""
    import csv
    import io

    from .records import atomic_write_text

    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["generation"]) <= generations]
    if len(kept) == len(rows):
        return
    if not kept:
        path.unlink()
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buf.getvalue())


def append_log_row(path, row: dict) -> None:
    """One generation's row of a run's CSV log (the header with the first row)."""
    import csv

    new = not path.exists()
    with path.open("a") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
