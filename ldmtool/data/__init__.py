"""Data: procedural demo phantoms and preprocessing (see phantoms.py, preprocess.py)."""
