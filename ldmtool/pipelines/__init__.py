"""Loaded models as objects and the jobs built on them: generation, imputation, segmentation."""
