"""Command line: ``python -m radflow_jax.data.synthetic --modality=cxr --num=N --out=DIR --seed=S``.

Writes N cases split 80/10/10 into train/val/test (override with --num_val/--num_test).
"""

from __future__ import annotations

from absl import app, flags

from radflow_jax.data.synthetic import MODALITIES
from radflow_jax.data.synthetic.writer import write_dataset

_MODALITY = flags.DEFINE_enum("modality", "cxr", list(MODALITIES), "Which modality to render.")
_NUM = flags.DEFINE_integer("num", 1000, "Total number of cases.", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Seed; the same seed gives byte-identical output.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Rendered image side in pixels (32..512).")
_NUM_VAL = flags.DEFINE_integer("num_val", None, "Validation cases (default 10%).")
_NUM_TEST = flags.DEFINE_integer("num_test", None, "Test cases (default 10%).")
_WORKERS = flags.DEFINE_integer("workers", 0, "Rendering processes (0 = in this process).")


def main(argv: list[str]) -> None:
    del argv
    num_val = _NUM_VAL.value if _NUM_VAL.value is not None else _NUM.value // 10
    num_test = _NUM_TEST.value if _NUM_TEST.value is not None else _NUM.value // 10
    num_train = _NUM.value - num_val - num_test
    if num_train < 0:
        raise app.UsageError(f"--num_val + --num_test exceed --num={_NUM.value}")
    counts = write_dataset(
        _OUT.value,
        _MODALITY.value,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        seed=_SEED.value,
        image_size=_SIZE.value,
        workers=_WORKERS.value,
    )
    print(f"wrote {_MODALITY.value} dataset to {_OUT.value}: {counts}")


if __name__ == "__main__":
    app.run(main)
