"""Attribution graphs over a replacement model (Ameisen et al. 2025): transcoders replace every MLP,
attention and norms are frozen, direct effects between active latents, error nodes, tokens and logits are
read by batched backward passes, pruned by cumulative influence, drawn in the HTML report.
"""
