"""The REST service: settings, database, auth, the LitServe app and its extra routes.

This package never imports torch or the model: inference runs in the Celery workers (workers/).
"""
