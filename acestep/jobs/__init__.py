"""Jobs: the queue (in this process or on Redis), uploads, waiting for a job, retention, the GPU
token guard and the front door every face submits through. Torch-free: the API process runs it."""
