"""Routes added to LitServe's FastAPI app next to POST /v1/jobs, one module per resource."""
