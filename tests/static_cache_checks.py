"""Checks shared by the static-capacity cache's tests (tiny model and the real one): a document
read with its memory's storage allocated once (namm.memory.static_capacity) against the same read
with storage that grows and is reallocated at every eviction (capacity None)."""
from __future__ import annotations

import torch

import namm
from namm import document_memory
from namm.memory import NammLayer


def read_both(lm, monkeypatch, document: str, policy: str, budget, n_up: int, positions: str = "original"):
    """(static memory, dynamic memory, storage allocations of each read)."""
    allocations = []
    real = NammLayer._replace_storage

    def counting(self, *args):
        allocations[-1] += 1
        return real(self, *args)

    monkeypatch.setattr(NammLayer, "_replace_storage", counting)
    allocations.append(0)
    static = namm.read_document(lm, document, policy=policy, budget=budget, n_up=n_up, positions=positions)
    allocations.append(0)
    monkeypatch.setattr(document_memory, "static_capacity", lambda *a: None)
    dynamic = namm.read_document(lm, document, policy=policy, budget=budget, n_up=n_up, positions=positions)
    monkeypatch.undo()
    return static, dynamic, allocations


def check_same_memory(static, dynamic, allocations) -> None:
    """The same kept tokens, in the same slots, with the same keys and values; the static one
    allocated once per layer at its capacity and never again, the dynamic one more often."""
    layers = len(static.cache.layers)
    assert static.cache.capacity is not None and dynamic.cache.capacity is None
    assert static.cache.regrowths == 0
    assert allocations[0] == layers < allocations[1]
    for a, b in zip(static.cache.layers, dynamic.cache.layers):
        assert a.keys.shape[2] == static.cache.capacity  # the storage never changed shape
        assert (a.length, a.seen, a.n_invalid) == (b.length, b.seen, b.n_invalid)
        n = a.length
        assert torch.equal(a.valid[:, :, :n], b.valid[:, :, :n])
        assert torch.equal(a.positions[:, :, :n][a.valid[:, :, :n]], b.positions[:, :, :n][b.valid[:, :, :n]])
        torch.testing.assert_close(a.keys[:, :, :n], b.keys[:, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values[:, :, :n], b.values[:, :, :n], atol=1e-5, rtol=1e-5)
        assert not a.valid[:, :, n:].any()
