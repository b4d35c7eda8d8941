"""Control work never waits behind model work, and periodic ticks do not pile up (issue 23,
items 2 and 13), on the real Redis broker with the real `-Q cpu` worker of the embedded default.

The stand-in for a busy GPU: model-job messages left in queue `gpu` with no free gpu worker (the
same as a worker stuck in a long job: nothing on `gpu` moves). Control tasks on `cpu` must still
run promptly."""
import re
import time

import pytest

from conftest import base_env, use_env


def _succeeded(procs, task: str) -> int:
    return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] succeeded",
                          procs.log_tail("worker-cpu", lines=100000)))


def _wait_for(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"not done within {timeout_s} s")


@pytest.fixture
def cpu_stack(redis_broker, tmp_path):
    from service.core.migrate import upgrade
    from service.core.state import reset_process_state
    from service.dev.processes import ServiceProcesses

    redis_url, prefix = redis_broker
    env = base_env(tmp_path, NAMM_DATABASE__URL=f"sqlite:///{tmp_path / 'namm.db'}",
                   NAMM_BROKER__URL=redis_url, NAMM_BROKER__KEY_PREFIX=f"{prefix}split-",
                   NAMM_WORKER__SWEEP_INTERVAL_S="3")
    use_env(env)
    reset_process_state()
    upgrade(env["NAMM_DATABASE__URL"])
    procs = ServiceProcesses(env=env, log_dir=tmp_path / "logs")
    yield procs
    procs.stop()


def test_cpu_work_runs_while_gpu_queue_is_blocked_and_stale_ticks_are_dropped(cpu_stack):
    from service.core.queue import (BATCH_TICK, GPU_QUEUE, RUN_JOB, SWEEP_JOBS, celery_app,
                                    queue_depths)
    from service.dev.processes import worker_commands

    app = celery_app()
    for i in range(5):  # stand-in model backlog: no gpu worker will take these
        app.send_task(RUN_JOB, args=[f"stand-in-{i}"], queue=GPU_QUEUE)
    cpu_stack.start("worker-cpu", worker_commands()["worker-cpu"])
    app.send_task(BATCH_TICK)  # routed to cpu by task_routes/default queue
    app.send_task(SWEEP_JOBS)
    waited = _wait_for(lambda: _succeeded(cpu_stack, BATCH_TICK) == 1
                       and _succeeded(cpu_stack, SWEEP_JOBS) == 1, timeout_s=60)
    assert queue_depths((GPU_QUEUE,))[GPU_QUEUE] >= 5  # the model queue never moved
    print(f"tick and sweep done {waited:.1f} s after sending, gpu queue blocked")

    # ticks sent while the cpu worker is stopped, with the beat entry's own options
    cpu_stack.stop()
    entry = app.conf.beat_schedule["sweep-jobs"]
    for _ in range(10):
        app.send_task(SWEEP_JOBS, **entry["options"])
    time.sleep(entry["options"]["expires"] + 1)
    cpu_stack.start("worker-cpu", worker_commands()["worker-cpu"])
    app.send_task(SWEEP_JOBS, **entry["options"])  # the next beat tick, fresh
    _wait_for(lambda: _succeeded(cpu_stack, SWEEP_JOBS) >= 2, timeout_s=60)
    time.sleep(3)  # time for any stale one to run, if it wrongly would
    assert _succeeded(cpu_stack, SWEEP_JOBS) == 2  # the first phase's one + exactly one now


@pytest.mark.parametrize("backend", ["redis", "embedded"])
def test_a_periodic_task_finding_another_of_its_kind_running_skips(backend, redis_broker,
                                                                   tmp_path, monkeypatch):
    from service.core.state import reset_process_state
    from service.core.task_lock import run_alone

    redis_url, prefix = redis_broker
    url = redis_url if backend == "redis" else f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    monkeypatch.setenv("NAMM_BROKER__URL", url)
    monkeypatch.setenv("NAMM_BROKER__KEY_PREFIX", f"{prefix}lock-")
    reset_process_state()
    with run_alone("tick", ttl_s=30) as first:
        with run_alone("tick", ttl_s=30) as second, run_alone("sweep", ttl_s=30) as other:
            assert (first, second, other) == (True, False, True)
    with run_alone("tick", ttl_s=30) as again:  # released once the holder finished
        assert again
    reset_process_state()
