"""Jobs: the ORM models, the repository that owns the job state machine, and pricing."""
