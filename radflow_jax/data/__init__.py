"""Data: synthetic generators, real-dataset formats, sections, tokenizer, Grain pipeline."""
