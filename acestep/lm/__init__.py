"""The 5 Hz LM: prompts, the CoT block, constrained decoding, seeded sampling, and the plan it
hands to the DiT (metadata and audio codes). Imports torch lazily; see ``docs/lm.md``."""
