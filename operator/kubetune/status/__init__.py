"""Pure functions: observed children -> status (conditions, progress)."""
