"""Measurements of training and of what it produced: where a training step's time goes,
which lesions a folder of masks finds."""
