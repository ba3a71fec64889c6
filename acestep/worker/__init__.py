"""The GPU side: a runner that owns one engine, the worker process that hosts it, and the dispatcher
that feeds it jobs one at a time. Importing this package does not import torch."""
