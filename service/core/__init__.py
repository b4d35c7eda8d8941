"""Set-up shared by every process: settings, the database, queues and the Celery factory."""
