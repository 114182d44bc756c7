"""Training: trainer, losses, checkpoints, experiments."""
