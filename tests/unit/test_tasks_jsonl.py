import json

import pytest

from namm.tasks import Sample, TasksFileError, load_tasks_file, make_samples, write_jsonl


def write(tmp_path, lines):
    p = tmp_path / "tasks.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_loads_lines_with_defaults(tmp_path):
    p = write(tmp_path, [
        json.dumps({"context": "Anna lives in Rome.", "question": "Where?", "answer": "Rome"}),
        "",
        json.dumps({"context": "c", "question": "q", "answer": ["a", "b"], "task": "mine", "metric": "f1"}),
    ])
    a, b = load_tasks_file(p)
    assert (a.task, a.answer, a.metric) == ("custom", "Rome", "contains")
    assert (b.task, b.answers, b.metric) == ("mine", ["a", "b"], "f1")
    assert a.meta["source"] == "tasks.jsonl:1" and b.meta["source"] == "tasks.jsonl:3"
    assert load_tasks_file(p, default_metric="f1")[0].metric == "f1"


@pytest.mark.parametrize("line, why", [
    ('{"context": "c", "question": "q"', "not valid JSON"),
    ('["c", "q", "a"]', "expected a JSON object"),
    ('{"question": "q", "answer": "a"}', "'context'"),
    ('{"context": "c", "answer": "a"}', "'question'"),
    ('{"context": "c", "question": "q"}', "'answer'"),
    ('{"context": "c", "question": "q", "answer": ""}', "'answer'"),
    ('{"context": "c", "question": "q", "answer": []}', "'answer' list"),
    ('{"context": "  ", "question": "q", "answer": "a"}', "empty 'context'"),
    ('{"context": "c", "question": "q", "answer": "a", "metric": "bleu"}', "unknown metric"),
])
def test_bad_line_is_named(tmp_path, line, why):
    good = json.dumps({"context": "c", "question": "q", "answer": "a"})
    p = write(tmp_path, [good, good, line])
    with pytest.raises(TasksFileError, match=rf"tasks\.jsonl:3: .*{why}"):
        load_tasks_file(p)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(TasksFileError, match="no samples"):
        load_tasks_file(write(tmp_path, [""]))
    with pytest.raises(TasksFileError, match="cannot read"):
        load_tasks_file(tmp_path / "nope.jsonl")
    assert issubclass(TasksFileError, ValueError)


def test_export_round_trip(tmp_path):
    samples = make_samples(["niah_single", "niah_multivalue"], [1024], 2, "test")
    path = tmp_path / "test.jsonl"
    write_jsonl(samples, path)
    back = load_tasks_file(path)
    assert [(s.task, s.context, s.question, s.answer, s.metric) for s in back] == \
           [(s.task, s.context, s.question, s.answer, s.metric) for s in samples]
    with pytest.raises(ValueError):
        write_jsonl([Sample("lm_fidelity", "c", "", "x", {"metric": "lm"})], path)
