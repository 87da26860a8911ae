"""Reinforcement learning: sampling (rollouts) now; GRPO and CAPO losses later."""
