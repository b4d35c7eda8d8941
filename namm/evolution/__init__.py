"""CMA-ES training of a NAMM. `python -m namm.evolution <command>` runs every stage of the pipeline
(record a pool -> surrogate fitness -> CMA-ES -> closed-loop validation -> export; see __main__).
The closed-loop run (`namm.evolve`, `namm evolve`): config, optimizer, fitness, records
(checkpoint, logs, exports), loop. The surrogate searches (refine, surprisal_search,
scorer_search) share one generation loop (cma_loop); checkpoint editors and the selection
harness are `tools`."""
from .config import ConfigError, EvolveConfig, Stage, config_from_dict, load_config
from .fitness import CandidateResult, SyntheticFitness, TaskFitness
from .loop import export_solution, run
from .optimizer import dump_optimizer, load_optimizer, make_optimizer, set_elite_count
from .records import (CHECKPOINT, LOG_FIELDS, RunState, atomic_write_bytes, atomic_write_text, load_state,
                      plot_curves, save_policy, save_state, write_logs)

__all__ = ["ConfigError", "EvolveConfig", "Stage", "config_from_dict", "load_config", "CandidateResult",
           "SyntheticFitness", "TaskFitness", "export_solution", "run", "dump_optimizer", "load_optimizer",
           "make_optimizer", "set_elite_count", "CHECKPOINT", "LOG_FIELDS", "RunState", "atomic_write_bytes",
           "atomic_write_text", "load_state", "plot_curves", "save_policy", "save_state", "write_logs"]
