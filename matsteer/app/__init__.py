"""Stage 8, the shells: the CLI, the demo, the notebook runner and helpers, the tuning widgets."""
