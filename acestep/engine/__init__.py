"""Request -> conditioning -> sampling -> audio. ``AceStep`` is the entry point."""
