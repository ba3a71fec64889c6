"""LoRA adapters for the DiT: the folder's catalog (``catalog``), a server's choice per request
(``selection``) and the adapters in a loaded DiT (``adapters``)."""
