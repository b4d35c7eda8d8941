"""Long-context evaluation of memory policies: scores, normalised scores and memory use.

Library use (the CMA-ES trainer calls this for fitness)::

    from namm.evaluation import evaluate
    rec = evaluate(lm, samples, policy, budget)     # policy: name or Policy object
    rec.normalised      # mean over tasks of (score with the policy / full-cache score)

Command line (``namm eval`` or ``python -m namm.evaluation``)::

    python -m namm.evaluation --policies full,h2o,surprisal --budgets 0.25,0.5 --lengths 1k,2k \\
        --n-per-task 3 --split test --json-out runs/eval.json

Protocol: every prompt is ``namm.generate(lm, context=doc, questions=[q], policy, budget)``:
the document is read and compressed before the question arrives (query-agnostic; use
``--query-aware`` to show the question first), with the one prompt template that
``namm.generate`` owns and greedy decoding. The full cache is always run on the same prompts
as the reference; its answers are cached per sample so they are computed once per process
(and once per file with ``reference_cache=``/``--reference-cache``).
"""
from .cli import add_eval_arguments, add_eval_subparser, main, parse_budgets, run_eval, select_samples
from .references import ReferenceCache, reference_key
from .report import format_tables, plot_records, short_name, write_csv
from .results import EvalRecord, SampleResult, aggregate
from .runner import DEFAULT_MAX_NEW_TOKENS, LM_CONTINUATION_TOKENS, evaluate

__all__ = ["add_eval_arguments", "add_eval_subparser", "main", "parse_budgets", "run_eval", "select_samples",
           "ReferenceCache", "reference_key", "format_tables", "plot_records", "short_name", "write_csv",
           "EvalRecord", "SampleResult", "aggregate", "DEFAULT_MAX_NEW_TOKENS", "LM_CONTINUATION_TOKENS", "evaluate"]
