"""namm.generate_batch on the real default model: answers token-identical to namm.generate one
at a time (and the same figures), for the full cache, the shipped memory (surprisal) and two
baselines, documents of different lengths decoded side by side; bad input fails alone."""
import namm
from namm import batch as batch_mod
from namm.errors import ContextTooLongError, EmptyInputError
from namm.spec import GenerationRequest
from namm.tasks import make_sample

STAT_FIELDS = ("tokens_in", "tokens_out", "kv_kept_per_layer", "kv_kept_fraction", "kv_bytes_peak",
               "kv_bytes_full_peak", "kv_token_steps", "kv_token_steps_full", "kv_updates", "policy_updates",
               "truncated")


def test_batched_answers_equal_one_at_a_time_on_the_real_model(lm, monkeypatch):
    specs = [("full", 512), ("surprisal", 900), ("streaming_llm", 700), ("snapkv", 600), ("surprisal", 400)]
    requests = []
    for i, (policy, length) in enumerate(specs):
        s = make_sample("passkey", length, "train", i)
        requests.append(GenerationRequest(context=s.context, questions=(s.question, "What is the document about?"),
                                          policy=policy, max_new_tokens=28, n_up=64))
    bad = [{"context": "", "questions": ["anything?"]},
           {"context": "word " * 9000, "questions": ["too long?"], "policy": "full"}]
    mixed = requests[:2] + bad[:1] + requests[2:4] + bad[1:] + requests[4:]
    steps = []
    real = batch_mod.batched_step

    def spy(lm_, caches, tokens, linears=None):
        steps.append(len(caches))
        return real(lm_, caches, tokens, linears)

    monkeypatch.setattr(batch_mod, "batched_step", spy)
    out = namm.generate_batch(lm, mixed, max_batch=4)
    monkeypatch.undo()

    assert isinstance(out[2], EmptyInputError)
    assert isinstance(out[5], ContextTooLongError)
    good = [o for i, o in enumerate(out) if i not in (2, 5)]
    assert max(steps) == 4  # answers of several documents decoded in one forward
    for request, outcome in zip(requests, good):
        ref = namm.generate(lm, request)
        assert outcome.answers == ref.answers, request.policy
        for name in STAT_FIELDS:
            assert getattr(outcome.stats, name) == getattr(ref.stats, name), (request.policy, name)
        if request.policy != "full":  # the memory really forgot, during reading and decoding
            assert outcome.stats.kv_kept_fraction < 0.9
    assert "68223" in good[0].answers[0]  # the full cache finds its pass key
