"""Repository batches: sources (archive, server path, git), ingestion filters, batches, schedules."""
