"""Memory and device policy: the only package that decides devices, dtypes, tiers and residency.

Importing this package does not import torch: the server process uses it to plan and validate,
while only the GPU worker imports ``acestep.memory.devices`` and runs models.
"""
