"""The surprisal pool travels without its token ids: packed (what is committed), unpacked with
the real tokenizer, checked against the recorded surprisal."""
import pytest
import torch

from namm.evolution.pool import PoolPrompt, load_pool, pack_pool, prompt_ids, unpack_pool


def _recorded(tok, task, length, index):
    # the fields a full-cache pass would write; surprisal made up (its length is what is checked)
    _, ctx_ids, q_ids, gold_ids = prompt_ids(tok, task, length, "train", index)
    sur = torch.rand(ctx_ids.shape[1]).to(torch.float16)
    return PoolPrompt(task, length, index, "train", ctx_ids, q_ids, gold_ids, correct=1.0, prediction="an answer",
                      full_log_prob=-0.5, surprisal=sur)


def test_a_packed_pool_unpacks_to_the_same_prompts(lm, tmp_path):
    pool, packed, again = tmp_path / "pool", tmp_path / "packed.pt", tmp_path / "again"
    pool.mkdir()
    originals = [_recorded(lm.tokenizer, "passkey", 1024, 0), _recorded(lm.tokenizer, "code_constant", 1024, 3)]
    for p in originals:
        p.save(pool / p.name)
    assert pack_pool(pool, packed, "train") == 2
    assert "ctx_ids" not in torch.load(packed, weights_only=False)["prompts"][0]  # ids are re-made
    assert unpack_pool(lm.tokenizer, packed, again) == 2
    back = {(p.task, p.index): p for p in load_pool(again)}
    for p in originals:
        q = back[(p.task, p.index)]
        for field in ("ctx_ids", "q_ids", "gold_ids", "surprisal"):
            assert torch.equal(getattr(p, field), getattr(q, field)), field
        assert (q.correct, q.prediction, q.full_log_prob, q.split) == (1.0, "an answer", -0.5, "train")


def test_unpacking_refuses_a_pool_recorded_with_other_tokens(lm, tmp_path):
    p = _recorded(lm.tokenizer, "passkey", 1024, 1)
    p.surprisal = p.surprisal[:-3]  # as if the generator or tokenizer had changed since
    (tmp_path / "pool").mkdir()
    p.save(tmp_path / "pool" / p.name)
    pack_pool(tmp_path / "pool", tmp_path / "packed.pt", "train")
    with pytest.raises(ValueError, match="document tokens now"):
        unpack_pool(lm.tokenizer, tmp_path / "packed.pt", tmp_path / "again")


def test_evidence_retention_sees_whether_the_answer_is_kept_whole(lm):
    from namm.evolution.surprisal_search import evidence_retention, evidence_spans
    from namm.policies.namm import NammPolicy

    p = _recorded(lm.tokenizer, "passkey", 1024, 2)
    spans = evidence_spans(lm.tokenizer, p, "train")
    assert spans and all(b - a >= 13 for a, b in spans)  # the answer and the 12 tokens before it
    a, b = spans[0]
    assert lm.tokenizer.decode(p.ctx_ids[0, a:b]).strip().endswith(make_answer(p))
    pol = NammPolicy(budget=0.3, threshold=False, sinks=4, recent=0.0, min_keep=128, surprise_mix={"max:33": 1.0})
    p.surprisal = torch.zeros_like(p.surprisal)
    p.surprisal[a:b] = 9.0  # the answer is the surprise: kept whole
    assert evidence_retention([(p, spans)], pol) == {"passkey": 1.0}
    p.surprisal = torch.zeros_like(p.surprisal)
    p.surprisal[: a - 200] = 9.0  # the surprise lies elsewhere, nothing recent is reserved: lost
    assert evidence_retention([(p, spans)], pol) == {"passkey": 0.0}


def make_answer(p):
    from namm.tasks import make_sample

    return make_sample(p.task, p.length, "train", p.index).answers[0]


def test_the_committed_packed_pool_still_unpacks(lm, tmp_path):
    # docs/results/surprisal-pool/train.pt, as committed: its first prompts of two tasks, unpacked
    # with today's generators and tokenizer into files of the one pool format
    data = torch.load("docs/results/surprisal-pool/train.pt", weights_only=False)
    rows = [r for r in data["prompts"] if r["task"] == "passkey"][:1] + \
        [r for r in data["prompts"] if r["task"] == "code_calls"][:1]
    torch.save({"split": data["split"], "prompts": rows}, tmp_path / "some.pt")
    assert unpack_pool(lm.tokenizer, tmp_path / "some.pt", tmp_path / "pool") == 2
    back = load_pool(tmp_path / "pool", solved_only=False, need=("ids", "surprisal"))
    for row, p in zip(sorted(rows, key=lambda r: (r["task"], r["index"])), back):
        assert (p.task, p.index, p.split, p.correct, p.full_log_prob) == \
            (row["task"], row["index"], data["split"], row["correct"], row["full_log_prob"])
        assert torch.equal(p.surprisal, row["surprisal"]) and p.ctx_ids.shape[1] == row["surprisal"].shape[0]
