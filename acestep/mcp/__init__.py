"""MCP tools (the official ``mcp`` SDK) over acestep's job queue: stdio (``acestep-mcp``) or
mounted on the REST server at ``/mcp`` (streamable HTTP, same API key)."""
