"""Flax NNX models: the vision-language policy (vit, decoder, policy)."""
