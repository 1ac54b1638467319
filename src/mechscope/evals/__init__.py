"""Honest evaluation: reconstruction metrics, loss with a reconstruction spliced in beside the zero-,
mean-ablation and rock baselines, and activation distributions along directions."""
