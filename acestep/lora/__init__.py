"""LoRA adapters for the DiT: finding and describing them (``catalog``); loading comes later."""
