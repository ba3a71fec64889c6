"""Training LoRA and LoKr adapters: dataset, preprocessing cache, trainer."""
