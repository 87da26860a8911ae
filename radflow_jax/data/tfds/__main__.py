"""``python -m radflow_jax.data.tfds --dataset=... --manual_dir=... --data_dir=...`` (see cli.py)."""

from radflow_jax.data.tfds import cli

if __name__ == "__main__":
    cli.run()
