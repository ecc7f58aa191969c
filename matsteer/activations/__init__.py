"""Stage 2, activations: load a model, name a site, read its activations, cache them as feature folders."""
