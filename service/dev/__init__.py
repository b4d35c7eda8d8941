"""Running the service on one machine: `make run`, process control, the demo client."""
