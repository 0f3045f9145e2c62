"""ECDP: efficient conditional diffusion with probability-flow sampling for super-resolution."""
