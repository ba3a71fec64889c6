"""The Gradio UI: a thin face over the same job queue and memory manager as the REST API."""
