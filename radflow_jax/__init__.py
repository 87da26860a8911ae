"""RadFlow-JAX: radiology report generation with hierarchical-reward RL."""

__version__ = "0.1.0"
