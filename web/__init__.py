"""The web viewer's static files (served by `attnscope serve` at its HTTP port)."""
