"""Metrics: detection (OCELOT mF1), segmentation, nuclei instances, statistics."""
