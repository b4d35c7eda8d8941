"""The one pool format (namm/evolution/pool.py): a prompt recorded once by the full cache, written
and read back with its optional parts, the files of both older formats still loading with the
same values, pack/unpack, and the recorded surprisal being the model's own -log p of each token;
on a tiny random Llama 3 with a byte tokenizer (the real model: tests/model/)."""
import pytest
import torch

from namm.evolution import pool as pl
from namm.evolution.pool import PoolPrompt, load_pool, pack_pool, record, unpack_pool
from namm.tasks import make_sample
from tests.tiny_llama import tiny_llama3

CORE = ("task", "length", "index", "correct", "prediction", "full_log_prob")
IDS = ("ctx_ids", "q_ids", "gold_ids")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(seed=5)


@pytest.fixture(scope="module")
def recorded(tiny):
    """passkey at 256 tokens: 1,069 byte tokens, updates at 512, 1024 and the end."""
    return record(tiny, "passkey", 256, "train", 0, attention=True, rows=64)


def _same(a: PoolPrompt, b: PoolPrompt, fields) -> None:
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f


def _same_updates(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["layer"], x["seen"]) == (y["layer"], y["seen"])
        assert torch.equal(x["ema"], y["ema"]) and torch.equal(x["positions"], y["positions"])


def test_a_record_holds_the_core_the_surprisal_and_the_attention(recorded, tiny):
    p = recorded
    t = p.ctx_ids.shape[1]
    sample, ctx_ids, q_ids, gold_ids = pl.prompt_ids(tiny.tokenizer, "passkey", 256, "train", 0)
    assert torch.equal(p.ctx_ids, ctx_ids) and torch.equal(p.q_ids, q_ids) and torch.equal(p.gold_ids, gold_ids)
    assert (p.task, p.length, p.index, p.split, p.rows) == ("passkey", 256, 0, "train", 64)
    assert p.surprisal.shape == (t,) and p.surprisal.dtype == torch.float16 and p.surprisal[0] == 0
    assert p.full_log_prob < 0 and p.correct in (0.0, 1.0) and p.has_attention
    layers, heads = tiny.model.config.num_hidden_layers, tiny.model.config.num_key_value_heads
    assert [u["seen"] for u in p.updates if u["layer"] == 0] == [512, 1024, t]  # every update, nothing evicted
    last = [u for u in p.updates if u["seen"] == t]
    assert len(last) == layers and last[0]["ema"].shape == (heads, t, 17)
    assert torch.equal(last[0]["positions"].long(), torch.arange(t).expand(heads, t))
    assert p.importance.shape == (layers, heads, t) and bool((p.importance >= 0).all())
    assert bool((p.importance.float().sum(-1) <= 1.01).all())


def test_the_recorded_surprisal_is_the_models_own_minus_log_p(recorded, tiny):
    ids = recorded.ctx_ids
    with torch.no_grad():
        logits = tiny.model(input_ids=ids, use_cache=False).logits[0].float()  # one forward, no cache
    want = -logits[:-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    got = recorded.surprisal.float()
    assert got[0] == 0  # the first token has nothing before it
    torch.testing.assert_close(got[1:], want, rtol=1e-3, atol=2e-3)  # float16 storage
    assert float(want.std()) > 0.1  # not a constant that would match anything


def test_without_attention_only_the_attention_part_is_left_out(recorded, tiny):
    p = record(tiny, "passkey", 256, "train", 0)
    assert p.updates is None and p.importance is None and p.rows is None and not p.has_attention
    _same(p, recorded, CORE + IDS + ("split", "surprisal"))  # the same pass, the same values


def test_a_record_is_written_and_read_back(recorded, tmp_path):
    recorded.save(tmp_path / recorded.name)
    assert [f.name for f in tmp_path.iterdir()] == ["passkey-256-00000.pt"]  # no temporary file left
    back = PoolPrompt.load(tmp_path / recorded.name)
    _same(back, recorded, CORE + IDS + ("split", "surprisal", "importance", "rows", "seconds"))
    _same_updates(back.updates, recorded.updates)


def test_a_file_of_the_old_surprisal_pool_loads_with_its_values(recorded, tmp_path):
    # what surprisal_search's PoolPrompt wrote: torch.save(p.__dict__) of these ten fields
    old = {f: getattr(recorded, f) for f in ("task", "length", "index", *IDS, "surprisal", "correct", "prediction",
                                              "full_log_prob")}
    torch.save(old, tmp_path / recorded.name)
    (p,) = load_pool(tmp_path, solved_only=False, need=("ids", "surprisal"))
    _same(p, recorded, CORE + IDS + ("surprisal",))
    assert p.split is None and not p.has_attention  # it did not store them
    with pytest.raises(ValueError, match="--attention"):
        load_pool(tmp_path, solved_only=False, need=("attention",))


def test_a_file_of_the_old_attention_pool_loads_with_its_values(recorded, tiny, tmp_path):
    # what recording.Recording.save wrote: the sample's text instead of token ids, no surprisal
    sample = make_sample("passkey", 256, "train", 0)
    old = {"task": "passkey", "sample": sample.to_dict(), "correct": recorded.correct,
           "prediction": recorded.prediction, "context_len": recorded.context_len,
           "answer_log_prob": recorded.full_log_prob, "updates": recorded.updates,
           "importance": recorded.importance, "seconds": 1.5}
    (tmp_path / "index.jsonl").write_text('{"file": "passkey-256-00000.pt"}\n')  # the old index is not needed
    torch.save(old, tmp_path / recorded.name)
    (p,) = load_pool(tmp_path, solved_only=False, tokenizer=tiny.tokenizer, need=("ids", "attention"))
    _same(p, recorded, CORE + IDS + ("split", "importance"))  # ids made again from the sample's text
    _same_updates(p.updates, recorded.updates)
    assert p.surprisal is None and p.seconds == 1.5
    (bare,) = load_pool(tmp_path, solved_only=False)  # no tokenizer: what warmstart needs, no ids
    assert bare.ctx_ids is None and bare.context_len == recorded.context_len and bare.has_attention
    with pytest.raises(ValueError, match="tokenizer"):
        bare.refs()


def test_solved_only_keeps_the_prompts_the_full_cache_answers_right(recorded, tmp_path):
    for index, correct in ((0, 1.0), (1, 0.5), (2, 0.0)):
        p = PoolPrompt(**{**{f: getattr(recorded, f) for f in ("task", "length", "split", *IDS, "prediction",
                                                                  "full_log_prob", "surprisal")},
                          "index": index, "correct": correct})
        p.save(tmp_path / p.name)
    assert [p.index for p in load_pool(tmp_path)] == [0]
    assert [p.index for p in load_pool(tmp_path, solved_only=False)] == [0, 1, 2]  # file-name order


def test_a_pool_is_recorded_in_shards_and_resumes(tiny, tmp_path):
    args = (tmp_path, "train", ["passkey", "niah_single"], [256], 4)
    pl.build_pool(tiny, *args, shard=(0, 2), log=lambda _: None)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["passkey-256-00000.pt", "passkey-256-00001.pt"]
    stamp = (tmp_path / "passkey-256-00000.pt").stat().st_mtime_ns
    pl.build_pool(tiny, *args, shard=(1, 2), log=lambda _: None)
    pl.build_pool(tiny, *args, log=lambda _: None)  # all there: nothing recorded again
    assert (tmp_path / "passkey-256-00000.pt").stat().st_mtime_ns == stamp
    got = load_pool(tmp_path, solved_only=False, need=("ids", "surprisal"))
    assert [(p.task, p.index) for p in got] == [("niah_single", 0), ("niah_single", 1), ("passkey", 0),
                                                ("passkey", 1)]


def test_pack_and_unpack_round_trip(recorded, tiny, tmp_path):
    pool, packed, again = tmp_path / "pool", tmp_path / "packed.pt", tmp_path / "again"
    pool.mkdir()
    second = record(tiny, "niah_single", 256, "train", 3)
    for p in (recorded, second):
        p.save(pool / p.name)
    assert pack_pool(pool, packed, "train") == 2
    rows = torch.load(packed, weights_only=False)["prompts"]
    assert set(rows[0]) == set(pl.PACKED_FIELDS)  # no token ids, no attention
    assert unpack_pool(tiny.tokenizer, packed, again) == 2
    back = {p.name: p for p in load_pool(again, solved_only=False)}
    for p in (recorded, second):
        _same(back[p.name], p, CORE + IDS + ("split", "surprisal"))
        assert back[p.name].updates is None


@pytest.mark.parametrize("argv, message", [
    (["--shard", "x"], "want i/k"),
    (["--shard", "2/2"], "want i/k"),
    (["--dtype", "int8"], "invalid choice"),
])
def test_bad_arguments_are_usage_errors_before_the_model_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        pl.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_pack_runs_from_the_command_and_the_surprisal_alias(recorded, tmp_path, capsys):
    from namm.evolution.surprisal_search import main as surprisal_main

    (tmp_path / "pool").mkdir()
    recorded.save(tmp_path / "pool" / recorded.name)
    assert pl.main(["pack", "--pool", str(tmp_path / "pool"), "--packed", str(tmp_path / "a.pt")]) == 0
    assert surprisal_main(["pack", "--pool", str(tmp_path / "pool"), "--packed", str(tmp_path / "b.pt")]) == 0
    a, b = (torch.load(tmp_path / f, weights_only=False) for f in ("a.pt", "b.pt"))
    assert a["split"] == b["split"] == "train" and torch.equal(a["prompts"][0]["surprisal"], recorded.surprisal)
