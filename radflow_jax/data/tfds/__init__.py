"""TFDS builders that turn the real datasets into ArrayRecord files, and their Grain-side reader.

``builders.py`` holds the ``iu_xray``, ``mimic_cxr`` and ``jsonl_studies`` builders (manual
download; images stored as encoded PNG/JPEG bytes, so no TensorFlow is needed), ``source.py``
reads a prepared dataset back as a lazy sequence of ``Record``s for ``pipeline.make_dataset``,
and ``cli.py`` is ``python -m radflow_jax.data.tfds --dataset=iu_xray --manual_dir=... --data_dir=...``.
Needs the ``tfds`` extra: ``pip install -e '.[tfds]'``.
"""
