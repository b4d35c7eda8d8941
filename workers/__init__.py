"""Celery workers: queue `gpu` runs the model (loaded once per worker child), queue `cpu` the rest."""
