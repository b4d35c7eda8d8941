"""CMA-ES training of a NAMM; `namm.evolve` is its command line. One job per module:
config, optimizer, fitness, records (checkpoint, logs, exports), loop."""
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
