"""The model worker yields the CPU to the API (issue 23 #12): its nice value is raised before
torch starts its threads, so every thread that runs the model carries it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import os
from workers.model import yield_cpu
yield_cpu(7)
import torch
torch.set_num_threads(2)
a = torch.ones(512, 512)
for _ in range(5):
    a = (a @ a).clamp(max=1.0)  # a parallel op: the intra-op pool's threads exist now
nice = set()
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/stat") as f:
        nice.add(int(f.read().rsplit(")", 1)[1].split()[16]))
print(len(os.listdir("/proc/self/task")), sorted(nice))
"""


def test_every_thread_of_the_model_worker_runs_at_the_configured_nice():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, check=True)
    threads, nice = done.stdout.split(maxsplit=1)
    assert int(threads) >= 2, done.stdout  # torch's pool was started
    assert nice.strip() == "[7]", done.stdout


def test_the_setting_is_bounded():
    import pytest
    from pydantic import ValidationError

    from service.core.settings import WorkerSettings

    assert WorkerSettings().model_nice == 10
    with pytest.raises(ValidationError):
        WorkerSettings(model_nice=20)
