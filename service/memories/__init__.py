"""Stored documents (issue 20): a document read once, its compressed memory kept for questions.

- store.py: where memory files live (a folder, a docker volume, an object store through fsspec)
- repository.py: the `stored_documents` rows (create, read, page, delete, quotas, expiry)
- worker.py: the worker's side (read and store a memory; answer from it, rebuilt when lost)
"""
