"""The REST edge (FastAPI): parse and validate input, authenticate, rate-limit, call the
control plane's services, render JSON, map the error tree to statuses. No business rules."""
