"""Clinical time series: tables of stays on a time grid, LSSDM imputation and synthesis.

- `reader`: long CSV/Parquet, wide CSV and PhysioNet 2012 per-stay files → `SeriesData` (values on a
  grid, masks of what was observed, static descriptors, outcomes) and back in the input's format;
- `model`: LSSDM (variational graph autoencoder over the variables, Transformer + 1D-CNN coarse
  decoder, conditional score network);
- `train`: its trainer for the one training loop; `impute` and `sample`: the loaded model's jobs.
"""
