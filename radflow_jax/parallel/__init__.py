"""Meshes, logical-axis sharding rules and multi-process helpers (DESIGN §5)."""
