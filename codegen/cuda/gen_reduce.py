"""GPU generators (placeholder)."""
