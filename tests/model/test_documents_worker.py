"""The worker's side of stored documents on the real default model (SmolLM2-135M, CPU) and a
real SQLite database and store folder: a read job stores a memory; question jobs answer from it
with the tokens `namm.ask` gives on the same memory in the process, from RAM, from the store,
and after a damaged, missing or evicted file (rebuilt from the text, said so); billing charges
the read once and each question its own work, with the re-read it saved; expiry deletes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

import namm
from service.core.state import reset_process_state
from tests.sqlite_service import sqlite_service

pytestmark = pytest.mark.model

DOC = " ".join(
    f"Depot {i} in the {['north', 'south', 'east', 'west'][i % 4]} zone stores {17 * i % 89} barrels of "
    f"{['oil', 'wine', 'grain', 'tar'][i % 4]}, checked by inspector {['Ames', 'Bose', 'Cruz'][i % 3]}."
    for i in range(30)
) + " The master key of depot 21 is kept under the name Orchid-7240."
QUESTION = "What name is the master key of depot 21 kept under?"
BUDGET = namm.Budget.tokens(128)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with sqlite_service(tmp_path_factory.mktemp("documents-worker"), NAMM_WORKER__PROGRESS_INTERVAL_S="0",
                        NAMM_MODEL__N_UP="256") as tmp:
        yield tmp


def _run(job_id, lm):
    from workers.runner import run_job

    return run_job(job_id, load_model=lambda: lm, generate=namm.generate)


def _store_document(policy="surprisal", budget=BUDGET):
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope
    from service.jobs.repository import NewJob
    from service.memories.repository import MemoryRepository

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        read = NewJob(tenant_id=tenant.id, text=DOC, content_type="text/plain", size_bytes=len(DOC),
                      filename=None, kind="read", instruction=None, policy=policy, budget=budget,
                      max_new_tokens=1)
        row = MemoryRepository(s).create(read, n_up=256, ttl=timedelta(days=30))
        return row.id, row.read_job_id


def _ask(memory_id, questions=(QUESTION,)):
    from service.core.db import session_scope
    from service.jobs.repository import NewJob
    from service.memories.repository import MemoryRepository
    from service.models import StoredDocument

    with session_scope() as s:
        row = s.get(StoredDocument, memory_id)
        job = NewJob(tenant_id=row.tenant_id, text="", content_type="", size_bytes=0, filename=None,
                     kind="answer", instruction=None, questions=list(questions), max_new_tokens=12)
        return MemoryRepository(s).question(row, job)


def _load(model, ident):
    from service.core.db import session_scope

    with session_scope() as s:
        obj = s.get(model, ident)
        if obj is not None and hasattr(obj, "usage"):
            _ = obj.usage, obj.result
        s.expunge_all()
        return obj


@pytest.fixture(scope="module")
def stored(env, lm):
    """A document read by its job, and the answer `namm.ask` gives on the same memory as the
    service stores it (namm's default storage, float16: it rounds keys and values)."""
    from service.models import StoredDocument

    memory_id, read_job = _store_document()
    assert _run(read_job, lm) == "done"
    memory = namm.read_document(lm, DOC, policy="surprisal", budget=BUDGET, n_up=256)
    folder = env / "expected"
    folder.mkdir()
    stored_form = namm.load_memory(lm, namm.save_memory(memory, folder / "doc.mem"))
    assert stored_form.manifest.storage == "float16"
    expected = namm.ask(lm, stored_form, QUESTION, max_new_tokens=12).answers
    return memory_id, read_job, expected, _load(StoredDocument, memory_id)


def _answer(job_id):
    from service.models import Job

    job = _load(Job, job_id)
    assert job.status == "done", job.error
    return job


def test_the_read_stores_a_memory_and_bills_the_read_once(stored, env):
    from service.models import Job

    memory_id, read_job, _, row = stored
    assert row.status == "ready" and row.tokens > 600
    assert 0 < row.bytes_stored < row.full_cache_bytes  # a budget of 128 tokens of ~700
    assert (env / "memories" / row.storage_key).stat().st_size == row.bytes_stored
    job = _load(Job, read_job)
    assert job.usage.tokens_in == row.tokens and job.usage.tokens_out == 0
    assert job.usage.cost_micro_usd > 0 and job.usage.tokens_not_reread is None


def test_questions_answer_from_the_memory_as_namm_ask_does(stored, lm):
    from workers import memories

    memory_id, _, expected, row = stored
    job_id = _ask(memory_id)
    assert _run(job_id, lm) == "done"
    job = _answer(job_id)
    assert job.result.answers == expected
    assert job.result.stats["memory"] == "ram"  # the read left it in this worker's RAM
    memories._forget_ram()
    job_id = _ask(memory_id)
    assert _run(job_id, lm) == "done"
    job = _answer(job_id)
    assert job.result.answers == expected and job.result.stats["memory"] == "store"
    # billed by its own work; the re-read it saved is priced apart
    assert job.usage.tokens_in < 60 and job.usage.tokens_not_reread == row.tokens
    assert job.usage.reread_cost_micro_usd > job.usage.cost_micro_usd


@pytest.mark.parametrize("damage", ["corrupt", "missing", "evicted"])
def test_a_lost_memory_is_rebuilt_from_the_text(stored, lm, env, damage):
    from service.core.db import session_scope
    from service.models import StoredDocument
    from workers import memories

    memory_id, _, expected, _ = stored
    row = _load(StoredDocument, memory_id)
    path = env / "memories" / row.storage_key
    memories._forget_ram()
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "missing":
        path.unlink()
    else:  # what the sweep's LRU eviction leaves: no file, no bytes
        path.unlink()
        with session_scope() as s:
            s.execute(update(StoredDocument).where(StoredDocument.id == memory_id)
                      .values(storage_key=None, bytes_stored=0))
    job_id = _ask(memory_id)
    assert _run(job_id, lm) == "done"
    job = _answer(job_id)
    assert job.result.answers == expected
    assert job.result.stats["memory"].startswith("memory rebuilt: ")
    assert job.usage.tokens_not_reread is None  # it did re-read: no reuse saving claimed
    after = _load(StoredDocument, memory_id)
    assert after.storage_key != row.storage_key and after.bytes_stored > 0
    assert Path(env / "memories" / after.storage_key).exists()
    assert not path.exists()  # the damaged file is gone


def test_a_waiting_question_runs_after_the_read(env, lm):
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.jobs import admission
    from service.models import Job

    memory_id, read_job = _store_document(policy="streaming_llm", budget=namm.Budget.tokens(96))
    job_id = _ask(memory_id)
    assert _load(Job, job_id).status == "waiting"
    assert _run(read_job, lm) == "done"
    with session_scope() as s:  # what the task does after every job (workers/releases.py)
        released = admission.release(s, _load(Job, job_id).tenant_id, get_settings().quotas)
    assert job_id in released
    assert _run(job_id, lm) == "done"
    assert _answer(job_id).result.answers[0]


def test_expiry_deletes_the_text_and_the_file(env, lm):
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.models import Document, StoredDocument, utcnow
    from workers.tasks import settle_memories

    memory_id, read_job = _store_document(policy="recency", budget=namm.Budget.tokens(64))
    assert _run(read_job, lm) == "done"
    row = _load(StoredDocument, memory_id)
    assert (env / "memories" / row.storage_key).exists()
    with session_scope() as s:
        s.execute(update(StoredDocument).where(StoredDocument.id == memory_id)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert settle_memories(get_settings())["documents_expired"] >= 1
    after = _load(StoredDocument, memory_id)
    assert after.status == "expired" and after.bytes_stored == 0
    assert not (env / "memories" / row.storage_key).exists()
    assert _load(Document, row.document_id).text == ""


def test_lru_eviction_keeps_the_total_under_the_setting(env, lm, monkeypatch):
    from service.core.db import session_scope
    from service.memories.repository import MemoryRepository
    from service.models import StoredDocument

    older, job_a = _store_document(policy="recency", budget=namm.Budget.tokens(64))
    newer, job_b = _store_document(policy="recency", budget=namm.Budget.tokens(64))
    assert _run(job_a, lm) == "done" and _run(job_b, lm) == "done"
    a, b = _load(StoredDocument, older), _load(StoredDocument, newer)
    with session_scope() as s:
        others = s.query(StoredDocument).filter(StoredDocument.id.notin_([older, newer]),
                                                StoredDocument.bytes_stored > 0).all()
        for o in others:  # older than both
            o.last_used_at = a.last_used_at - timedelta(hours=1)
        total = sum(o.bytes_stored for o in others) + a.bytes_stored + b.bytes_stored
    with session_scope() as s:
        keys = MemoryRepository(s).evict_over(total - 1)
    # the least recently used go first, until the total fits
    assert keys and b.storage_key not in keys
    assert _load(StoredDocument, newer).bytes_stored == b.bytes_stored


def test_the_cost_report_shows_the_reuse_apart_from_eviction(stored, lm):
    from service.core.db import session_scope
    from service.models import Job, UsageRecord
    from service.reports.cli import format_table
    from service.reports.cost import build_report, parse_query

    memory_id, _, _, row = stored
    job_id = _ask(memory_id)
    assert _run(job_id, lm) == "done"
    with session_scope() as s:
        report = build_report(s, parse_query(from_=None, to=None, group_by="policy", tz=None,
                                             tenant_id=row.tenant_id))
        from_memories = s.query(UsageRecord).join(Job).filter(UsageRecord.tokens_not_reread.is_not(None)).all()
        expected_saved = sum(u.reread_cost_micro_usd for u in from_memories)
        expected_tokens = sum(u.tokens_not_reread for u in from_memories)
    totals = report["totals"]
    assert totals["questions_from_memories"] == len(from_memories) >= 2
    assert totals["tokens_not_reread"] == expected_tokens
    assert totals["reuse_saved_micro_usd"] == expected_saved > 0
    assert "question(s) answered from kept memories" in format_table(report)


def test_concurrent_questions_each_work_on_their_own_copy(stored, lm):
    """Two questions on one memory at once, in two threads of one worker process (they share
    the memory in RAM): each answers from its own copy, as if alone."""
    import threading

    from workers import memories

    memory_id, _, expected, _ = stored
    memories._forget_ram()
    jobs = [_ask(memory_id) for _ in range(2)]
    _run(_ask(memory_id), lm)  # loads the memory into RAM: both threads fork the same one
    outcomes = {}
    threads = [threading.Thread(target=lambda j=j: outcomes.__setitem__(j, _run(j, lm))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [outcomes[j] for j in jobs] == ["done", "done"]
    for j in jobs:
        job = _answer(j)
        assert job.result.answers == expected and job.result.stats["memory"] == "ram"


CHILD_WRITER = """
import sys
import namm
lm = namm.load_model()
memory = namm.load_memory(lm, sys.argv[1])
print("loaded", flush=True)
for i in range(1000):
    print(f"start {i}", flush=True)
    namm.save_memory(memory, f"{sys.argv[2]}/k{i}.mem")
"""


def test_sigkill_while_writing_never_leaves_a_memory_that_loads(env, lm, tmp_path):
    """A worker killed in the middle of writing a memory: the file being written is absent
    (only a temporary file is left), every finished one loads; nothing half-written loads."""
    import signal
    import subprocess
    import sys
    import time

    memory = namm.read_document(lm, DOC, policy="full")  # ~30 MiB: a write long enough to cut
    source = namm.save_memory(memory, tmp_path / "source.mem")
    folder = tmp_path / "store"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(source), str(folder)],
                             stdout=subprocess.PIPE, text=True)
    partial = []
    try:
        for line in child.stdout:
            if line.strip() == "start 3":
                break
        deadline = time.monotonic() + 30
        while not partial and time.monotonic() < deadline:  # k3's temporary file: mid-write
            partial = [p for p in folder.iterdir() if p.name.startswith(".k3.mem.")]
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert partial, "the writer never started k3's file"
    finals = sorted(p.name for p in folder.iterdir() if p.name.endswith(".mem"))
    assert {"k0.mem", "k1.mem", "k2.mem"} <= set(finals)
    for name in finals:  # whatever has the final name is whole
        assert namm.load_memory(lm, folder / name).tokens == memory.tokens
    if "k3.mem" not in finals:  # killed before the rename (nearly always): only the temporary
        assert [p.name for p in folder.iterdir() if not p.name.endswith(".mem")] == [partial[0].name]
    # a temporary name is never a key the store reads (keys start with a letter or digit)
    from service.memories.store import MemoryStore

    with pytest.raises(ValueError):
        MemoryStore(str(folder)).path(partial[0].name)


def test_a_full_disk_fails_the_read_clearly_and_leaves_no_partial_file(env, lm, monkeypatch):
    """The store on a real 1 MiB tmpfs: a ~30 MiB memory does not fit."""
    import os
    import subprocess

    from service.models import Job, StoredDocument

    small = env / "full-disk"
    small.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {mounted.stderr}")
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("NAMM_MEMORIES__STORE_URL", str(small))
        reset_process_state()
        memory_id, read_job = _store_document(policy="full", budget=None)
        assert _run(read_job, lm) == "failed"
        job = _load(Job, read_job)
        assert "could not be stored" in job.error and "No space left on device" in job.error
        assert list(small.iterdir()) == []  # no partial file, no temporary file
        row = _load(StoredDocument, memory_id)
        assert row.status == "failed" and "No space left" in row.error
    finally:
        subprocess.run(["umount", str(small)], check=False)
        monkeypatch.undo()
        reset_process_state()


def test_a_non_local_store_is_a_configuration_change(env, lm):
    """The same MemoryStore over another fsspec file system (its in-memory one stands in for an
    object store here: no network): the file is staged locally, put whole, fetched to load."""
    from service.memories.store import MemoryStore

    store = MemoryStore("memory://namm-test/memories")
    assert not store.local
    memory = namm.read_document(lm, DOC, policy="surprisal", budget=BUDGET, n_up=256)
    expected = namm.ask(lm, memory, QUESTION, max_new_tokens=12).answers
    nbytes = store.save(memory, "doc.1.mem", storage="float32")  # exact: the same answers
    assert nbytes == store.fs.size(store.path("doc.1.mem")) > 0
    assert namm.ask(lm, store.load(lm, "doc.1.mem"), QUESTION, max_new_tokens=12).answers == expected
    store.delete("doc.1.mem")
    assert not store.exists("doc.1.mem")
    with pytest.raises(FileNotFoundError):
        store.load(lm, "doc.1.mem")
