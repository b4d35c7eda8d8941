"""Train, validation and test never share a seed or a haystack source."""

import pytest

from namm.tasks import SPLITS, make_sample, sample_seed, split_of
from namm.tasks.code import parse_sections
from namm.tasks.sources import code_modules, prose_docs
from namm.tasks.splits import SEEDS_PER_SPLIT


def test_seed_ranges_are_disjoint():
    ranges = [range(sample_seed(s, 0), sample_seed(s, SEEDS_PER_SPLIT - 1) + 1) for s in SPLITS]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start
    with pytest.raises(ValueError):
        sample_seed("test", SEEDS_PER_SPLIT)
    with pytest.raises(ValueError):
        sample_seed("dev", 0)


def test_sources_are_partitioned():
    prose = {s: {d.source_id for d in prose_docs(s)} for s in SPLITS}
    code = {s: {m for m, _u in code_modules(s)} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        assert prose[a] and code[a]
        for b in SPLITS[i + 1:]:
            assert not prose[a] & prose[b]
            assert not code[a] & code[b]
    # a module's docstring and its code go to the same split
    assert all(split_of(sid) == s for s in SPLITS for sid in prose[s])


def test_split_assignment_is_stable():
    assert split_of("module:argparse") == split_of("module:argparse")
    shares = [sum(split_of(f"x{i}") == s for i in range(3000)) / 3000 for s in SPLITS]
    assert shares[0] == pytest.approx(0.6, abs=0.05) and shares[2] == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("task", ["doc_qa", "doc_source"])
def test_prose_samples_use_their_split_only(task):
    for split in SPLITS:
        s = make_sample(task, 2048, split, 0)
        assert s.meta["sources"] and all(split_of(sid) == split for sid in s.meta["sources"])


def test_test_haystack_text_is_not_in_train_sources():
    train_text = "\n".join(d.text for d in prose_docs("train"))
    s = make_sample("niah_single", 2048, "test", 0)
    paragraphs = [p for p in s.context.split("\n\n") if len(p) > 200]
    assert paragraphs and not any(p[:150] in train_text for p in paragraphs)


def test_code_samples_of_different_splits_share_no_module():
    mods = {}
    for split in SPLITS:
        s = make_sample("code_returns", 2048, split, 0)
        mods[split] = {p for p, _t in parse_sections(s.context)}
    assert not mods["train"] & mods["test"] and not mods["validation"] & mods["test"]
