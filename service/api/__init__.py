"""The REST API: the LitServe app, its routes, submission parsing, auth and metrics."""
