"""Stage 3, the method: the steerer, its losses and training, probes and the baselines as steerers."""
