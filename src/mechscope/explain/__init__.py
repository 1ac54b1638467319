"""Explanations of latents, measured: evidence from a store, explainers that write one sentence per latent, and
scorers that say how well a sentence picks out where the latent fires, beside random and constant explanations."""
