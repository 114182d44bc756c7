"""Readers (one module per source format), targets, paired augmentation, synthetic data."""
