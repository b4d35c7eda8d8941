"""The reference check's replay of decoding settings equals greedy_decode, setting by setting."""
import pytest
import torch

from namm.decoding import Decoding
from namm.generate import greedy_decode, prefill
from namm.memory import NammCache
from namm.policies import make_policy
from namm.tasks.reference_check import decode_settings, summarise
from tests.tiny_llama import tiny_llama3

SETTINGS = {"plain": Decoding.plain(), "stop": Decoding(stop_on_loop=6),
            "rp": Decoding(repetition_penalty=1.5), "ng": Decoding(no_repeat_ngram_size=2, stop_on_loop=0)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replayed_settings_equal_greedy_decode(seed):
    lm = tiny_llama3(seed=seed, layers=2)
    g = torch.Generator().manual_seed(seed)
    ctx, q = torch.randint(3, 250, (1, 90), generator=g), torch.randint(3, 250, (1, 7), generator=g)
    stop = {2, int(q[0, 0])}
    cache = NammCache(lm.model.config, make_policy("full"), n_up=64)
    with torch.no_grad():
        prefill(lm, cache, ctx)
        snap = cache.snapshot()
        fast = decode_settings(lm, cache, snap, q, 30, stop, SETTINGS)
        for name, decoding in SETTINGS.items():
            cache.restore(snap)
            logits = prefill(lm, cache, q)
            assert fast[name] == greedy_decode(lm, cache, logits, 30, stop, decoding), name
    assert fast["rp"] != fast["plain"] and fast["ng"] != fast["plain"]  # the replay did diverge


def test_summary_marks_strong_cells():
    rec = lambda task, length, score: {"task": task, "length": length,  # noqa: E731
                                       "answers": {"x": {"score": score, "tokens": 3}}}
    table = summarise([rec("a", 1024, 1.0), rec("a", 1024, 0.5), rec("a", 2048, 0.0)], ["x"], 0.7)
    assert "| a | 0.75* (2) | 0.00 (1) |" in table
