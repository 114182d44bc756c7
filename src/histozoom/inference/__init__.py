"""Inference on patch pairs and nuclei tiles: decoding (peaks, watershed), test-time augmentation, predictors."""
