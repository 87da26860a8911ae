"""Hugging Face interop: export to a ``transformers`` Llava folder, import Llava-format weights.

``convert`` maps names and layouts (numpy only); ``export`` writes folders (``radflow_jax.export``
is its CLI); ``load`` reads them. ``transformers`` is imported only inside the functions that need
configs or processors. ``export`` is not re-exported here: it imports the SFT trainer, which may
itself import ``hf.load``.
"""

from radflow_jax.hf.load import ImportReport, init_from_hf, load_pretrained, policy_config_from_hf

__all__ = ["ImportReport", "init_from_hf", "load_pretrained", "policy_config_from_hf"]
