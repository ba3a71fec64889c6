"""Scale-out on Redis: job records and routing for stateless API servers, and ``acestep-worker``.

The embedded queue (``acestep.jobs.queue.LocalJobQueue``) stays the default; this package takes
over when ``ACESTEP_QUEUE_URL=redis://...`` is set. Delivery runs on dramatiq's Redis broker (see
docs/architecture.md for why); job records, progress, results and cancellation live in Redis
hashes written by the small Lua transitions in :mod:`acestep.cluster.store`. Nothing here
imports torch: API servers never touch a GPU.
"""
