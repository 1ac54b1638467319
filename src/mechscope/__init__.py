"""mechscope: read a network's activations, decompose them into sparse latents, and test claims
about what the network computes with measurements that can fail."""

__version__ = "0.1.0"
