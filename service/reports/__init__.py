"""Cost-reduction reports: roll-ups of usage records (cost.py), the CLI (`python -m
service.reports`), and the dashboard page with its vendored chart library (static/)."""
