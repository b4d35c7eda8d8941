"""`python -m namm.evolution <command> ...`: every stage of the NAMM evolution pipeline.

Each command is a module's `main(argv)`; this passes it the arguments after the command's name.
"""
from __future__ import annotations

import importlib
import sys

PROG = "python -m namm.evolution"

# (command, module, argv before the user's, one line), in pipeline order
COMMANDS = [
    ("pool", "namm.evolution.pool", [],
     "record a pool: prompts read once by the full cache (surprisal; --attention), pack/unpack"),
    ("warmstart", "namm.evolution.warmstart", [], "fit the scorer to the pool by gradient descent (refine's start)"),
    ("refine", "namm.evolution.refine", [], "CMA-ES of a warm-started NAMM on the open-loop surrogate fitness"),
    ("surprisal", "namm.evolution.surprisal_search", [],
     "the surprisal channel: correlation, evolve (CMA-ES), export, retention"),
    ("scorer", "namm.evolution.scorer_search", [],
     "the attention scorer on top of the channel: correlation, evolve (CMA-ES), export"),
    ("evolve", "namm.evolve", [], "closed-loop CMA-ES from a JSON config (= namm evolve), --export"),
    ("select", "namm.evolution.tools", ["select"], "closed-loop validation of variants against the full cache"),
    ("variant", "namm.evolution.tools", ["variant"], "export: a checkpoint with some settings replaced"),
    ("profile", "namm.evolution.tools", ["profile"], "export: a budget profile of a checkpoint"),
]
STAGES = ("record a pool -> surrogate fitness -> CMA-ES -> closed-loop validation -> export")


def usage() -> str:
    width = max(len(name) for name, *_ in COMMANDS)
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help)", "",
             f"The NAMM evolution pipeline: {STAGES}.", "", "commands, in pipeline order:"]
    lines += [f"  {name:<{width}}  {line}" for name, _, _, line in COMMANDS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.stderr.write(usage() + f"{PROG}: error: a command is required\n")
        return 2
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    table = {name: (module, prefix) for name, module, prefix, _ in COMMANDS}
    if argv[0] not in table:
        sys.stderr.write(usage() + f"{PROG}: error: unknown command {argv[0]!r}\n")
        return 2
    module, prefix = table[argv[0]]
    # each module's argparse names itself after sys.argv[0]: make that the command as typed
    sys.argv[0] = PROG if prefix else f"{PROG} {argv[0]}"
    run = importlib.import_module(module).main
    if module == "namm.evolve":  # its parser names itself; namm evolve and python -m namm.evolve stay as they are
        return run(argv[1:], prog=sys.argv[0]) or 0
    return run(prefix + argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
