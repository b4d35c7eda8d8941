"""Running a policy on samples: `evaluate` (the library entry point, also the CMA-ES fitness)."""
from __future__ import annotations

import time
from typing import Callable, Sequence

from namm.spec import DEFAULT_POLICY
from namm.tasks import Sample, score_answer

from .references import _DEFAULT_REFERENCES, ReferenceCache, _Reference, reference_key, reference_model_name
from .results import EvalRecord, SampleResult, aggregate


DEFAULT_MAX_NEW_TOKENS = 32  # for samples that do not say (tasks files)
LM_CONTINUATION_TOKENS = 64


def _policy_label(policy) -> str:
    return policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)


def _is_full(policy) -> bool:
    return _policy_label(policy).strip().lower() == "full"


def _generate(lm, sample: Sample, policy, budget, max_new_tokens: int, query_aware: bool, n_up: int,
              truncate: bool) -> _Reference:
    import namm

    started = time.perf_counter()
    res = namm.generate(lm, context=sample.context, questions=[sample.question], policy=policy,
                        budget=budget, max_new_tokens=max_new_tokens, n_up=n_up,
                        query_aware=query_aware, truncate=truncate)
    st = res.stats
    score = score_answer(res.text, sample.answers, sample.metric)
    return _Reference(res.text, score, st.kv_kept_fraction, st.kv_bytes_peak, st.kv_bytes_full_peak,
                      st.tokens_in, time.perf_counter() - started)


def _lm_ids(lm, sample: Sample):
    import torch

    tok = lm.tokenizer
    ctx = tok.encode(sample.context, add_special_tokens=False)
    cont = tok.encode(sample.answer, add_special_tokens=False)[:LM_CONTINUATION_TOKENS]
    return torch.tensor(ctx), torch.tensor(cont)


def _log_probs(lm, sample: Sample, policy, budget, n_up: int, stats=None):
    import namm

    ctx, cont = _lm_ids(lm, sample)
    started = time.perf_counter()
    logits = namm.continuation_logits(lm, ctx, cont, policy=policy, budget=budget, n_up=n_up, stats=stats)
    return logits.log_softmax(-1), len(ctx), time.perf_counter() - started


def _lm_reference(lm, sample: Sample, n_up: int) -> _Reference:
    log_probs, n_ctx, secs = _log_probs(lm, sample, "full", None, n_up)
    # the full cache agrees with itself: score 1 by definition
    return _Reference("", 1.0, 1.0, None, None, n_ctx, secs, log_probs.half())


def _lm_result(lm, sample: Sample, policy, budget, n_up: int, ref: _Reference) -> SampleResult:
    from namm.generate import GenerationStats

    st = GenerationStats()
    log_probs, n_ctx, secs = _log_probs(lm, sample, policy, budget, n_up, stats=st)
    full = ref.log_probs.float()
    kl = float((full.exp() * (full - log_probs)).sum(-1).mean())
    agree = float((full.argmax(-1) == log_probs.argmax(-1)).float().mean())
    return SampleResult(sample.task, sample.meta.get("length"), sample.meta.get("index"), "", agree, "",
                        ref.score, st.kv_kept_fraction, st.kv_bytes_peak, st.kv_bytes_full_peak, n_ctx, secs,
                        max(kl, 0.0))


def evaluate(lm, samples: Sequence[Sample], policy=DEFAULT_POLICY, budget=None, *, query_aware: bool = False,
             n_up: int = 512, max_new_tokens: int | None = None, truncate: bool = False,
             reference_cache: ReferenceCache | None = None,
             progress: Callable[[int], None] | None = None) -> EvalRecord:
    """Run ``policy`` (a name or a Policy object, e.g. a NammPolicy with evolved parameters) at
    ``budget`` on ``samples`` and score it against the full cache on the same prompts.

    ``max_new_tokens`` overrides each sample's own (``meta["max_new_tokens"]``). ``progress`` is
    called with 1 after every sample. Full-cache results come from ``reference_cache`` (the
    process-wide one by default) and are computed only when missing.
    """
    refs = reference_cache if reference_cache is not None else _DEFAULT_REFERENCES
    model_name = reference_model_name(lm)
    full = _is_full(policy)
    results: list[SampleResult] = []
    for sample in samples:
        mnt = max_new_tokens or sample.meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        key = reference_key(model_name, sample, mnt, query_aware, n_up)
        ref = refs.get(key)
        if ref is None or (sample.metric == "lm" and ref.log_probs is None):
            ref = (_lm_reference(lm, sample, n_up) if sample.metric == "lm"
                   else _generate(lm, sample, "full", None, mnt, query_aware, n_up, truncate))
            refs.put(key, ref)
        length, index = sample.meta.get("length"), sample.meta.get("index")
        if sample.metric == "lm":
            result = (SampleResult(sample.task, length, index, "", 1.0, "", 1.0, 1.0, None, None,
                                   ref.tokens_in, ref.seconds, 0.0) if full
                      else _lm_result(lm, sample, policy, budget, n_up, ref))
        else:
            out = ref if full else _generate(lm, sample, policy, budget, mnt, query_aware, n_up, truncate)
            result = SampleResult(sample.task, length, index, out.prediction, out.score, ref.prediction,
                                  ref.score, out.kept_fraction, out.kv_bytes_peak, out.kv_bytes_full_peak,
                                  out.tokens_in, out.seconds)
        results.append(result)
        if progress is not None:
            progress(1)
    label = _policy_label(policy)
    if not isinstance(policy, str):  # a Policy object carries its own budget
        budget = getattr(policy, "budget", budget)
    return aggregate(label, None if full else budget, query_aware, results)
