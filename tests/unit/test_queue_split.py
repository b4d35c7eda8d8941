"""Control work never queues behind model work (issue 23, items 2 and 13): routing, the two
workers of the embedded default, the cpu path free of torch, and periodic ticks that expire."""
import subprocess
import sys

from service.core.queue import BATCH_TICK, CPU_QUEUE, GPU_QUEUE, RUN_JOB, SWEEP_JOBS
from service.dev.processes import worker_commands
from service.repos.queue import INGEST_BATCH
from workers.celery_app import app
import workers.batches  # noqa: F401  (registers the tasks a worker runs)
import workers.tasks  # noqa: F401
from workers.shadow import SHADOW_RUN

MODEL_TASKS = {RUN_JOB, SHADOW_RUN}


def _queue_of(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def test_every_task_that_is_not_a_model_job_is_routed_to_cpu():
    ours = {name for name in app.tasks if name.startswith("namm.")}
    assert {RUN_JOB, SWEEP_JOBS, BATCH_TICK, INGEST_BATCH, SHADOW_RUN} <= ours
    assert {name: _queue_of(name) for name in ours - MODEL_TASKS} == {
        name: CPU_QUEUE for name in ours - MODEL_TASKS}
    assert _queue_of(RUN_JOB) == GPU_QUEUE


def test_embedded_default_runs_a_gpu_worker_and_a_cpu_worker():
    commands = worker_commands()
    queues = {name: argv[argv.index("-Q") + 1] for name, argv in commands.items()}
    assert queues == {"worker": GPU_QUEUE, "worker-cpu": CPU_QUEUE}
    assert commands["worker"][commands["worker"].index("-c") + 1] == "1"  # one model at a time


def test_beat_ticks_expire_after_their_interval():
    schedule = app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {SWEEP_JOBS, BATCH_TICK}
    for entry in schedule.values():
        assert entry["options"]["expires"] == float(entry["schedule"])


def test_the_cpu_workers_code_never_imports_torch():
    # what a `-Q cpu` worker imports: the app, its task modules, ingestion and the tick
    code = ("import sys, workers.celery_app, workers.tasks, workers.batches, workers.shadow, "
            "service.repos.sources, service.repos.ingest, service.repos.schedules; "
            "print(sorted(m for m in ('torch', 'transformers', 'namm.generate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
