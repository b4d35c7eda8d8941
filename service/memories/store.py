"""Where memory files live: any fsspec file system, chosen by `memories.store_url`.

A folder (the embedded default `var/memories`, a docker volume) or an object store
(`s3://bucket/prefix` with s3fs installed) is a configuration change; the code is the same.
Writes are atomic: namm.save_memory writes a temporary file, fsyncs it and renames it (on a
local folder, straight into the store; elsewhere into a local staging folder first, then one
`put` of the finished file, which an object store makes visible whole or not at all). Loads
verify the file's sha256 (namm.load_memory): a corrupt, truncated or foreign file is an error
the caller rebuilds from, never an answer.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from service.core.state import on_reset

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class MemoryStore:
    def __init__(self, url: str):
        self.fs, root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> str:
        if not KEY.match(key):  # keys are made by the service, never by a tenant
            raise ValueError(f"not a memory key: {key!r}")
        return f"{self.root}/{key}"

    def save(self, memory, key: str, storage: str | None = None) -> int:
        """Write `memory` (a namm.DocumentMemory) under `key`, its keys and values in `storage`
        (None: namm's default); its size in bytes."""
        from namm import save_memory

        if self.local:
            save_memory(memory, self.path(key), storage=storage)
            return os.path.getsize(self.path(key))
        with tempfile.TemporaryDirectory(prefix="namm-memory-") as staging:
            local = Path(staging) / key
            save_memory(memory, local, storage=storage)
            self.fs.put_file(str(local), self.path(key))
            return local.stat().st_size

    def load(self, lm, key: str, policy=None):
        """The memory stored under `key`, checked against `lm` (namm.load_memory's errors:
        FileNotFoundError, CorruptMemoryError, MemoryMismatchError)."""
        from namm import load_memory

        if self.local:
            return load_memory(lm, self.path(key), policy=policy)
        with tempfile.TemporaryDirectory(prefix="namm-memory-") as staging:
            local = Path(staging) / key
            try:
                self.fs.get_file(self.path(key), str(local))
            except (FileNotFoundError, OSError) as exc:
                raise FileNotFoundError(f"memory {key} is not in the store") from exc
            return load_memory(lm, local, policy=policy)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))


_stores: dict[str, MemoryStore] = {}
on_reset(_stores.clear)


def memory_store(url: str | None = None) -> MemoryStore:
    """The store of the settings' `memories.store_url` (one per process and URL)."""
    if url is None:
        from service.core.settings import get_settings

        url = get_settings().memories.store_url
    if url not in _stores:
        _stores[url] = MemoryStore(url)
    return _stores[url]
