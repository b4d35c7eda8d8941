"""Language-model fidelity: how closely a compressed cache predicts real text.

The sample is a stretch of the split's real prose cut in two at a word boundary: ``context``
(the length asked for) and ``answer``, the next ~64 tokens. The evaluation feeds both to
``namm.continuation_logits`` with the policy and with the full cache and compares the
next-token distributions over the continuation: KL(full || policy) and top-1 agreement (the
score). There is no question and no generation.
"""

from __future__ import annotations

import random

from namm.tasks.base import Sample, register
from namm.tasks.haystack import join_paragraphs, prose_paragraphs
from namm.tasks.lengths import chars_for_tokens

CONTINUATION_TOKENS = 64


@register("lm_fidelity", family="lm_fidelity", metric="lm", max_new_tokens=0,
          description="KL and top-1 agreement of next-token distributions vs the full cache")
def lm_fidelity(rng: random.Random, length: int, split: str) -> Sample:
    n_context = chars_for_tokens(length, "prose")
    n_cont = chars_for_tokens(CONTINUATION_TOKENS, "prose")
    text = join_paragraphs(prose_paragraphs(split, n_context + n_cont + 200, rng))
    cut = text.rfind(" ", 0, n_context)
    end = text.rfind(" ", cut + 1, cut + 1 + n_cont)
    # the continuation starts with the space, as the tokenizer would see it in running text
    return Sample("lm_fidelity", text[:cut], "", text[cut:end], {"haystack": "prose"})
