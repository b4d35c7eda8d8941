"""The REST service around the namm library.

  core/  settings, the database engine and sessions, queues and the Celery factory
  jobs/  ORM models, the repository that owns the job state machine, pricing
  api/   the LitServe app, routes, submission parsing, auth, metrics
  dev/   the embedded local run (`make run`), process control, the demo

This package never imports torch or the model, and never imports `workers/`: inference runs
in the Celery workers, which import this package.
"""
