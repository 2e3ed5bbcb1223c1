"""Scoring a model's clip probabilities: the metrics of every run (``metrics``) and DCASE's
SONYC-UST metrics over a taxonomy (``dcase``). numpy and scikit-learn; no torch."""
