"""The REST server: FastAPI app, routes, job queue, uploads, auth."""
