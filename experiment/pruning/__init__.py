"""Pruning continuous-depth models: which layers, how sparse, and the WT/FT rules."""
