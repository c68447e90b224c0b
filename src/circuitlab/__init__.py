"""circuitlab."""
