"""The evaluation runner with a stand-in for the model: aggregation, the full-cache reference
cache, normalised scores, reports and the command line's input errors (no model loaded)."""

import json
from types import SimpleNamespace

import pytest
import torch

import namm
from namm import evaluation as ev
from namm.tasks import Sample, make_samples


def qa(task, answer, length=1024, index=0):
    return Sample(task, f"context of {task} {index}", f"question {index}?", answer,
                  {"metric": "contains", "length": length, "index": index, "max_new_tokens": 8})


class FakeGenerate:
    """Full cache answers everything right; 'half' only samples with an even index;
    'blind' never; every call is counted per policy."""

    def __init__(self):
        self.calls = {}

    def __call__(self, lm, context, questions, policy, budget, **kw):
        name = policy if isinstance(policy, str) else policy.name
        self.calls[name] = self.calls.get(name, 0) + 1
        index = int(questions[0].split()[1].rstrip("?"))
        right = name == "full" or (name == "half" and index % 2 == 0)
        text = f"the answer is {self.answers[(context, questions[0])]}" if right else "no idea"
        kept = 1.0 if name == "full" else (budget or 0.5)
        stats = SimpleNamespace(kv_kept_fraction=kept, kv_bytes_peak=int(1000 * kept),
                                kv_bytes_full_peak=1000, tokens_in=100)
        return SimpleNamespace(text=text, stats=stats)


@pytest.fixture
def fake(monkeypatch):
    gen = FakeGenerate()
    monkeypatch.setattr(namm, "generate", gen)
    return gen


def with_answers(gen, samples):
    gen.answers = {(s.context, s.question): s.answers[0] for s in samples}
    return samples


LM = SimpleNamespace(name="fake-lm")


def test_full_reference_is_computed_once(fake):
    samples = with_answers(fake, [qa("a", "x1", index=i) for i in range(4)])
    refs = ev.ReferenceCache()
    ev.evaluate(LM, samples, "half", 0.25, reference_cache=refs)
    ev.evaluate(LM, samples, "half", 0.5, reference_cache=refs)
    full = ev.evaluate(LM, samples, "full", None, reference_cache=refs)
    assert fake.calls == {"full": 4, "half": 8}
    assert full.score == 1.0 and full.normalised == 1.0 and full.budget is None


def test_normalised_score_and_aggregates(fake):
    samples = with_answers(fake, [qa("a", "x", index=i) for i in range(4)]
                           + [qa("b", "y", length=2048, index=i) for i in range(2)])
    rec = ev.evaluate(LM, samples, "half", 0.25, reference_cache=ev.ReferenceCache())
    assert rec.per_task == {"a": 0.5, "b": 0.5} and rec.per_task_full == {"a": 1.0, "b": 1.0}
    assert rec.normalised == 0.5 and rec.score == 0.5
    assert set(rec.per_cell) == {"a@1k", "b@2k"}
    assert rec.kept_fraction == 0.25 and rec.kv_bytes_peak == 250 and rec.kv_bytes_full_peak == 1000
    assert rec.samples[0].reference.startswith("the answer is")
    blind = ev.evaluate(LM, samples, "blind", 0.25, reference_cache=ev.ReferenceCache())
    assert blind.normalised == 0.0


def test_tasks_the_full_cache_fails_are_left_out_of_the_ratio():
    ok = ev.SampleResult("a", 1024, 0, "x", 0.5, "x", 1.0)
    failed = ev.SampleResult("b", 1024, 0, "x", 1.0, "y", 0.0)
    rec = ev.aggregate("p", 0.5, False, [ok, failed])
    assert rec.per_task_normalised == {"a": 0.5, "b": None} and rec.normalised == 0.5


def test_policy_objects_keep_their_budget(fake):
    samples = with_answers(fake, [qa("a", "x")])
    pol = SimpleNamespace(name="half", budget=0.3)
    rec = ev.evaluate(LM, samples, pol, None, reference_cache=ev.ReferenceCache())
    assert rec.policy == "half" and rec.budget == 0.3


def test_reference_cache_file_survives_processes(fake, tmp_path):
    samples = with_answers(fake, [qa("a", "x", index=i) for i in range(2)])
    path = tmp_path / "refs.json"
    ev.evaluate(LM, samples, "blind", 0.5, reference_cache=ev.ReferenceCache(path))
    assert len(ev.ReferenceCache(path)) == 2
    ev.evaluate(LM, samples, "blind", 0.5, reference_cache=ev.ReferenceCache(path))
    assert fake.calls["full"] == 2


def test_lm_fidelity_kl_and_agreement(monkeypatch):
    sample = make_samples(["lm_fidelity"], [1024], 1, "test")[0]
    vocab = 5

    def fake_logits(lm, ctx, cont, policy="full", budget=None, n_up=512, stats=None):
        logits = torch.zeros(len(cont), vocab)
        logits[:, 0] = 3.0
        if policy != "full":
            logits[::2, 1] = 6.0  # the compressed cache changes its mind on every other token
        return logits

    tok = SimpleNamespace(encode=lambda text, add_special_tokens=False: list(range(len(text.split()))))
    monkeypatch.setattr(namm, "continuation_logits", fake_logits)
    lm = SimpleNamespace(name="fake-lm", tokenizer=tok)
    refs = ev.ReferenceCache()
    rec = ev.evaluate(lm, [sample], "recency", 0.25, reference_cache=refs)
    assert rec.score == pytest.approx(0.5, abs=0.05) and rec.kl > 0
    same = ev.evaluate(lm, [sample], "full", None, reference_cache=refs)
    assert same.score == 1.0 and same.kl == 0.0


def test_reports(fake, tmp_path):
    samples = with_answers(fake, [qa("niah_single", "x", index=i) for i in range(2)])
    refs = ev.ReferenceCache()
    records = [ev.evaluate(LM, samples, p, b, reference_cache=refs)
               for p, b in [("full", None), ("half", 0.25), ("half", 0.5), ("blind", 0.25)]]
    table = ev.format_tables(records)
    assert "length 1k" in table and "| half | 0.25 | 0.50 |" in table and "niah=niah_single" in table
    ev.write_csv(records, tmp_path / "r.csv")
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("policy,budget") and "niah_single@1k" in rows[0] and len(rows) == 5
    ev.plot_records(records, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    d = records[1].to_dict()
    assert json.loads(json.dumps(d))["per_task"] == {"niah_single": 0.5}


def test_parse_budgets():
    assert ev.parse_budgets("0.25, 0.5,512") == [0.25, 0.5, 512]
    for bad in ("0", "-1", "x", "1.5", ""):
        with pytest.raises(ValueError):
            ev.parse_budgets(bad)


def test_cli_bad_tasks_file_names_the_line(tmp_path, capsys):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"context": "c", "question": "q", "answer": "a"}\n{"context": "c"}\n')
    assert ev.main(["--tasks-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert "mine.jsonl:2" in err and "'question'" in err


def test_cli_export_needs_no_model(tmp_path):
    out = tmp_path / "test.jsonl"
    assert ev.main(["--tasks", "passkey,lm_fidelity", "--lengths", "1k", "--n-per-task", "2",
                    "--export-jsonl", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["task"] for x in lines] == ["passkey", "passkey"]  # lm_fidelity has no QA form
    assert all(x["meta"]["split"] == "test" for x in lines)


def test_subparser_registers_eval():
    import argparse

    parser = argparse.ArgumentParser()
    ev.add_eval_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--policies", "h2o", "--budgets", "0.5", "--query-aware"])
    assert args.func is ev.run_eval and args.query_aware and args.split == "test"
