"""Stage 5, steering a running model: the pyvene intervention, gate recording, steered generation."""
