"""Long-context tasks for evaluation and evolution.

>>> from namm.tasks import make_samples, available_tasks
>>> samples = make_samples(["niah_single"], [2048], n_per_task=3, split="train")

Every generator is deterministic in (task, length, split, index), builds its haystack only
from sources of its split (see ``splits``), and knows its answer by construction.
"""

from namm.tasks.base import METRICS, Sample, TaskSpec, available_tasks, get_task, make_sample, make_samples
from namm.tasks.jsonl import TasksFileError, load_tasks_file, write_jsonl
from namm.tasks.lengths import length_label, parse_length, parse_lengths
from namm.tasks.metrics import contains, normalize, score_answer, token_f1
from namm.tasks.splits import SPLITS, sample_seed, split_of

__all__ = [
    "METRICS", "SPLITS", "Sample", "TaskSpec", "TasksFileError", "available_tasks", "contains",
    "get_task", "length_label", "load_tasks_file", "make_sample", "make_samples", "normalize",
    "parse_length", "parse_lengths", "sample_seed", "score_answer", "split_of", "token_f1",
    "write_jsonl",
]
