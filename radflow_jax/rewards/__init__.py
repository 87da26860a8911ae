"""Reward models and clinical labels (schemas, labeler, NLG, consistency, hierarchy)."""
