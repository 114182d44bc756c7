"""Inference: decoding, predictors, fusion, whole slides."""
