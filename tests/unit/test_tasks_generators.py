"""Every generator's answer is re-derived from the context it produced (no model needed)."""

import re
from collections import Counter

import pytest

from namm.tasks import available_tasks, make_sample
from namm.tasks.code import called_names, functions, parse_sections, returns_of
from namm.tasks.common_words import word_counts
from namm.tasks.lengths import CHARS_PER_TOKEN
from namm.tasks.retrieval import MULTI_VALUE_NEEDLE, NEEDLE

LENGTHS = [1024, 4096]
INDICES = range(3)


def samples(task):
    return [make_sample(task, length, "train", i) for length in LENGTHS for i in INDICES]


def needle_values(context, template, key):
    pattern = re.escape(template.format(key=key, value="@@")).replace("@@", r"(\d+)")
    return re.findall(pattern, context)


def test_registry_has_every_family():
    assert set(available_tasks()) >= {
        "passkey", "niah_single", "niah_multikey", "niah_multivalue", "variable_tracking",
        "common_words", "doc_qa", "doc_source", "code_constant", "code_calls", "code_returns",
        "lm_fidelity"}


@pytest.mark.parametrize("task", ["passkey", "niah_single", "doc_qa", "code_calls", "common_words"])
def test_generation_is_deterministic(task):
    a, b = make_sample(task, 1024, "validation", 5), make_sample(task, 1024, "validation", 5)
    assert a == b
    assert make_sample(task, 1024, "validation", 6).context != a.context


@pytest.mark.parametrize("task", ["passkey", "niah_single", "doc_qa", "code_returns", "variable_tracking"])
def test_context_size_follows_length(task):
    for length in (1024, 2048, 4096):
        s = make_sample(task, length, "test", 0)
        kind = {"noise": "noise", "prose": "prose", "code": "code"}[s.meta["haystack"]]
        est = len(s.context) / CHARS_PER_TOKEN[kind]
        assert 0.85 * length <= est <= 1.15 * length


def test_passkey():
    for s in samples("passkey"):
        found = set(re.findall(r"The pass key is (\d+)\.", s.context))
        assert found == {s.answer}
        # the answer's form is part of the question (without it SmolLM2 answers "The pass key
        # is the pass key." on most prompts)
        assert s.question == "What is the pass key? Answer with the number only."


def test_niah_single():
    for s in samples("niah_single"):
        assert needle_values(s.context, NEEDLE, s.meta["key"]) == [s.answer]
        assert s.meta["key"] in s.question


def test_niah_multikey_has_distractors():
    for s in samples("niah_multikey"):
        key = re.search(r"number for (\S+)\?", s.question).group(1)
        assert needle_values(s.context, NEEDLE, key) == [s.answer]
        others = [needle_values(s.context, NEEDLE, k) for k in s.meta["distractor_keys"]]
        assert len(others) == 3 and all(len(v) == 1 and v[0] != s.answer for v in others)


def test_niah_multikey_needles_lie_in_different_quarters():
    for s in samples("niah_multikey"):
        keys = [re.search(r"number for (\S+)\?", s.question).group(1)] + s.meta["distractor_keys"]
        depths = sorted(s.context.index(f"magic number for {k} is:") / len(s.context) for k in keys)
        assert [int(d * 4) for d in depths] == [0, 1, 2, 3]


def test_niah_multivalue():
    for s in samples("niah_multivalue"):
        assert sorted(needle_values(s.context, MULTI_VALUE_NEEDLE, s.meta["key"])) == sorted(s.answer)
        assert len(set(s.answer)) == 4


def test_variable_tracking_chain_resolves_to_answer():
    for s in samples("variable_tracking"):
        value = re.search(r"assigned the value (\d+)", s.question).group(1)
        env = {}
        for target, source in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", s.context):
            env[target] = env[source[4:]] if source.startswith("VAR ") else source
        assert sorted(v for v, val in env.items() if val == value) == sorted(s.answer)
        assert len(env) == 10  # the distractor chain is there too


def test_common_words_are_the_most_frequent():
    for s in samples("common_words"):
        counts = Counter(word_counts(s.context))
        ranked = counts.most_common()
        assert sorted(w for w, _ in ranked[:10]) == sorted(s.answer)
        assert ranked[9][1] > ranked[10][1]  # no tie at the cut


def test_doc_qa_fact_is_unique_and_the_question_repeats_its_words():
    from namm.tasks.doc_qa import RELATIONS

    for s in samples("doc_qa"):
        person, relation = s.meta["person"], s.meta["relation"]
        fact, question, _pool = RELATIONS[relation]
        assert s.question == question.format(name=person)
        pattern = re.escape(fact.format(name=person, value="@@")).replace("@@", r"(\w+)")
        assert re.findall(pattern, s.context) == [s.answer]
        # the question is the fact's own words up to the value: "What is the home city of X?"
        assert fact.format(name=person, value="").lower().startswith(question.format(name=person)[8:-1].lower())
        # the distractors: the person's two other facts, one per other relation
        assert len(s.meta["facts"]) == 3 and all(f in s.context for f in s.meta["facts"])
        assert sum(person in f for f in s.meta["facts"]) == 3


def test_doc_source_sentence_lies_in_the_answered_document():
    for s in samples("doc_source"):
        sentence = s.meta["sentence"]
        assert s.context.count(sentence) == 1
        sections = re.split(r"^Document \d+: ", s.context, flags=re.M)[1:]
        holder = [sec.split("\n", 1)[0] for sec in sections if sentence in sec]
        assert holder == [s.answer]
        assert [sec.split("\n", 1)[0] for sec in sections].count(s.answer) == 1


def test_code_constant_is_assigned_once():
    import ast

    for s in samples("code_constant"):
        name = re.search(r"constant (\w+)\?", s.question).group(1)
        assigns = [node for _path, tree in parse_sections(s.context) for node in ast.walk(tree)
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]
        assert len(assigns) == 1
        value = ast.literal_eval(assigns[0].value)
        assert str(value) in s.answers


def test_code_calls_has_a_single_caller():
    for s in samples("code_calls"):
        callee = s.meta["callee"]
        callers = [fn.name for _p, tree in parse_sections(s.context) for fn in functions(tree)
                   if callee in called_names(fn)]
        assert callers == [s.answer]


def test_code_returns_expression():
    import ast

    for s in samples("code_returns"):
        name = s.meta["function"]
        fns = [fn for _p, tree in parse_sections(s.context) for fn in functions(tree) if fn.name == name]
        assert len(fns) == 1
        (ret,) = returns_of(fns[0])
        assert ast.unparse(ret.value) == ast.unparse(ast.parse(s.answer, mode="eval").body)


def test_code_sections_parse_and_come_from_the_split():
    from namm.tasks.splits import split_of

    for task in ("code_constant", "code_calls", "code_returns"):
        for split in ("train", "test"):
            s = make_sample(task, 2048, split, 1)
            paths = [p for p, _tree in parse_sections(s.context)]
            assert paths and all(split_of("module:" + p.replace("/", ".")) == split for p in paths)


def test_lm_fidelity_continues_the_context():
    from namm.tasks.haystack import join_paragraphs
    from namm.tasks.sources import prose_docs

    corpus = "\n\n".join(join_paragraphs(list(d.paragraphs)) for d in prose_docs("train"))
    for s in samples("lm_fidelity"):
        assert s.question == "" and s.metric == "lm"
        assert len(s.answer) > 100 and s.answer.startswith((" ", "\n"))
        # the seam is real text: the last words of the context run on into the continuation
        seam = (s.context[-60:] + s.answer[:60]).split("\n\n")[-1]
        assert seam.strip() and seam.strip()[:30] in corpus


@pytest.mark.parametrize("task", [t for t in available_tasks() if t != "lm_fidelity"])
def test_echoing_the_question_scores_nothing(task):
    from namm.tasks import score_answer

    for s in samples(task):
        assert score_answer(s.question, s.answers, s.metric) == 0.0


def test_meta_records_how_to_score():
    for task in available_tasks():
        s = make_sample(task, 1024, "test", 0)
        assert s.task == task
        assert s.meta["split"] == "test" and s.meta["length"] == 1024
        assert s.meta["metric"] in ("contains", "contains_all", "lm")
        assert s.meta["max_new_tokens"] >= 0
