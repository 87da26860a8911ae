"""Supervised fine-tuning: teacher-forced cross-entropy on the report tokens."""
