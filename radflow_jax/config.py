"""The config every entry point shares: its fields with their meaning, defaults and validation.

Experiment files in ``configs/`` start from ``base_config()`` and change what differs; entry points
call ``validate()`` once at load time and pass the locked config on. Field meanings are documented
here, next to the defaults, so one place answers "what does this knob do".
"""

from __future__ import annotations

import os

import ml_collections

from radflow_jax import schema
from radflow_jax.metrics import NORMALIZERS

# Light on purpose: configs/*.py and tools import this module without JAX. The checks that need
# the model, mesh or reward code import it inside ``validate``.

STAGES: tuple[str, ...] = ("data", "vision", "sft", "labeler", "rl", "eval")
DATA_SOURCES = ("synthetic", "r2gen", "mimic_cxr_jpg", "openi_xml", "jsonl", "tfds")
SECTION_FALLBACKS = ("error", "findings", "last_sentence")
TOKENIZER_KINDS = ("word", "bpe")
MODEL_SIZES = ("toy", "tiny", "small", "base", "1b", "7b")
REMAT_POLICIES = ("none", "full", "dots_saveable")  # models/policy.py
MODEL_DTYPES = ("auto", "float32", "bfloat16")  # auto: bfloat16 for 1b/7b, float32 below
LAYER_LOOPS = ("auto", "scan", "unroll")  # auto: scan for 1b/7b, unrolled below
OPENI_ARCHIVE = "~/.cache/radflow_jax/openi/NLMCXR_reports.tgz"


DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("patch", None),
    ("vit_embed", "fsdp"),
    ("vit_mlp", "tensor"),
    ("positions", None),
    ("length", None),
    ("layers", None),  # the stacked-layer axis of scanned blocks
    ("patches", None),  # ViT activations' patch axis
    ("cache_batch", ("data", "fsdp")),  # KV-cache rows (the rollout batch)
)


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""


def base_config() -> ml_collections.ConfigDict:
    """All fields, with defaults for the embedded chest X-ray demo."""
    c = ml_collections.ConfigDict()
    c.modality = "cxr"  # "cxr" | "carotid": picks the observation schema
    c.extra_critical = ()  # observations added to the modality's critical set
    c.seed = 0  # one seed for data generation, shuffling, augmentation and init
    c.stages = ("data", "vision", "sft", "rl", "eval")  # run in order; eval scores every trained stage
    c.workdir = ""  # "" -> runs/<modality>; --workdir overrides

    c.data = ml_collections.ConfigDict()
    d = c.data
    # synthetic (generated into <workdir>/data) | r2gen | mimic_cxr_jpg | openi_xml | jsonl | tfds;
    # what annotation/labels mean per source: the table in data/sources.py
    d.source = "synthetic"
    d.tfds_name = ""  # tfds: prepared dataset, e.g. "iu_xray", "mimic_cxr", "jsonl_studies/carotid"
    d.reports_dir = ""  # mimic_cxr_jpg: folder holding files/pXX/pN/sM.txt, relative to d.dir
    d.view_order = ("PA", "AP", "LATERAL", "LL")  # mimic_cxr_jpg: view order; max_views keeps the first
    d.split_seed = 0  # openi_xml/jsonl: seed of splits drawn from record ids (independent of c.seed)
    d.split_fractions = (0.7, 0.1, 0.2)  # openi_xml/jsonl: train/val/test shares of drawn splits
    d.dir = ""  # dataset folder holding the annotation file ("" -> <workdir>/data for synthetic)
    d.annotation = "annotation.json"  # R2Gen annotation file, relative to d.dir
    d.image_root = ""  # folder image paths are relative to ("" -> d.dir); paths may not escape it
    d.labels = "labels.jsonl"  # ground-truth labels, relative to d.dir ("" -> none)
    d.num_train = 2000  # synthetic only: cases per split
    d.num_val = 200
    d.num_test = 300
    d.render_size = 128  # synthetic only: rendered image side (32..512)
    d.generate_workers = 0  # synthetic only: rendering processes (0 = in process)
    d.image_size = 128  # model input side; images are resized to it
    d.max_views = 1  # views per study fed to the model; extra views are dropped, missing ones masked
    d.prompt = "chest x-ray frontal view"  # text after the image prefix, before the report
    d.max_prompt_len = 8  # tokens, including <bos>; left-padded
    d.max_target_len = 192  # report tokens, including <eos>; longer targets are truncated and counted
    d.num_workers = 0  # Grain worker processes (0 = in the main process)
    d.augment = True  # train-time geometric/intensity jitter (never a horizontal flip: laterality)
    d.section_fallback = "error"  # reports without FINDINGS/IMPRESSION headers: error|findings|last_sentence
    d.on_bad_record = "error"  # "error" stops at the first bad record; "skip" counts and reports it
    d.verify_images = True  # check every image decodes when the dataset is loaded

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "word"  # "word" (WordLevel, digits split) or "bpe"
    c.tokenizer.vocab_size = 4000
    c.tokenizer.min_frequency = 2  # word-level: rarer words map to <unk>

    # Start SFT from a Hugging Face Llava folder (e.g. one exported by radflow_jax.export) instead of
    # a random init; its tokenizer is used as is. "" = random init.
    c.init = ml_collections.ConfigDict()
    c.init.from_hf = ""

    c.model = ml_collections.ConfigDict()
    c.model.size = "tiny"  # toy | tiny | small | base | 1b | 7b (models/policy.py SIZES)
    c.model.dtype = "auto"  # compute dtype (MODEL_DTYPES; auto = bfloat16 for 1b/7b); params stay float32
    c.model.logits_chunk = 0  # target positions per log-softmax chunk (0 = all at once; 1b/7b: 256)
    c.model.layer_loop = "auto"  # LAYER_LOOPS: scan the layers (1b/7b) or unroll them (faster small steps)
    c.model.remat = "none"  # none | full | dots_saveable: what a block recomputes in the backward pass

    # Device mesh and logical-axis rules: every parameter and activation names its axes
    # ("embed", "mlp", ...); these rules map them onto mesh axes. -1 = all remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.rules = DEFAULT_RULES

    # Vision warm-up (sft/vision.py): the tower and projector learn the observations the labeler
    # reads from each training report before SFT, which starts from them.
    c.vision = ml_collections.ConfigDict()
    c.vision.num_steps = 2000  # ~50 ms a step for `tiny` at batch 32 on 2 CPU cores (cxr)
    c.vision.batch_size = 32
    c.vision.labels = "reports"  # "reports": labeler output on each report | "dataset": labels file
    # (the stage is skipped when init.from_hf supplies a trained tower)
    c.vision.freeze = True  # SFT and RL keep a warmed-up (or imported) vision tower fixed
    c.vision.learning_rate = 2e-3
    c.vision.warmup_steps = 50
    c.vision.min_lr_ratio = 0.0
    c.vision.weight_decay = 1e-4
    c.vision.grad_clip = 1.0
    c.vision.log_every = 100
    c.vision.checkpoint_every = 500
    c.vision.keep_checkpoints = 1

    c.sft = ml_collections.ConfigDict()
    c.sft.num_steps = 400
    c.sft.batch_size = 16  # global batch
    c.sft.grad_accum = 1  # micro-batches per step (batch_size must divide)
    c.sft.learning_rate = 1e-3
    c.sft.warmup_steps = 20
    c.sft.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
    c.sft.weight_decay = 0.01
    c.sft.grad_clip = 1.0
    c.sft.length_bucket = 32  # pad targets to a multiple of this per batch (0 = full length)
    c.sft.log_every = 10
    c.sft.checkpoint_every = 100
    c.sft.keep_checkpoints = 2

    # The Flax labeler (rewards/labeler_train.py): stage `labeler` trains it on rule-labeled text;
    # labeler.backend="net" makes the RL reward use it instead of the rule labeler.
    c.labeler = ml_collections.ConfigDict()
    c.labeler.backend = "rule"  # rule | net: which labeler gives the RL reward its labels
    c.labeler.size = "tiny"  # models/labeler_net.py SIZES
    c.labeler.dtype = "float32"  # compute dtype; parameters stay float32
    c.labeler.vocab_size = 4000  # the labeler's own word tokenizer, fit on its training text
    c.labeler.min_frequency = 2  # rarer words map to <unk>
    c.labeler.max_len = 256  # tokens per text; longer texts are cut (counted in the eval report)
    c.labeler.openi = OPENI_ARCHIVE  # Open-I report archive used when present (cxr only); "" = never
    c.labeler.openi_holdout = 0.1  # share of Open-I reports held out for the agreement report
    c.labeler.num_steps = 1500
    c.labeler.batch_size = 64
    c.labeler.learning_rate = 2e-3
    c.labeler.warmup_steps = 100
    c.labeler.min_lr_ratio = 0.05
    c.labeler.weight_decay = 0.01
    c.labeler.grad_clip = 1.0
    c.labeler.log_every = 100
    c.labeler.checkpoint_every = 500
    c.labeler.keep_checkpoints = 2
    c.labeler.eval_batch_size = 128  # NetLabeler's fixed batch (rows are padded up to it)

    # GRPO. Names follow TRL's GRPOConfig where the concept is the same (rl/grpo.py has the table).
    c.rl = ml_collections.ConfigDict()
    c.rl.num_steps = 40
    c.rl.batch_size = 8  # prompts (images) per step; each gets group_size samples
    c.rl.group_size = 8  # TRL num_generations
    c.rl.learning_rate = 5e-5
    c.rl.warmup_steps = 5
    c.rl.min_lr_ratio = 1.0  # constant after warm-up
    c.rl.weight_decay = 0.0
    c.rl.grad_clip = 1.0
    # Rollouts near the greedy decoding the evaluation uses: at 1.0 the tiny default model's samples
    # are far worse than its greedy reports, and GRPO spends the run cleaning them up (README).
    c.rl.temperature = 0.3
    c.rl.augment = False  # rollouts see images as evaluation does (jitter regularises SFT only)
    c.rl.top_k = 0  # 0 = off
    c.rl.top_p = 1.0
    c.rl.max_new_tokens = 0  # 0 -> data.max_target_len (TRL max_completion_length)
    c.rl.num_iterations = 1  # updates per rollout batch, reusing its old log-probs
    c.rl.epsilon = 0.2  # clip range below 1 (TRL epsilon)
    c.rl.epsilon_high = 0.2  # clip range above 1 (TRL epsilon_high; DAPO uses 0.28)
    c.rl.beta = 0.04  # KL coefficient to the frozen SFT policy (k3 estimator)
    c.rl.loss_type = "dapo"  # grpo | dr_grpo | dapo (TRL loss_type)
    c.rl.scale_rewards = "group"  # group | batch | none (TRL scale_rewards)
    c.rl.mask_truncated_completions = False
    c.rl.log_every = 5
    c.rl.checkpoint_every = 20
    c.rl.keep_checkpoints = 2

    # Critical-aware policy optimization (DESIGN §1.3): each mechanism is a switch.
    c.capo = ml_collections.ConfigDict()
    c.capo.enabled = True  # tighter clip and adaptive KL for critical cases
    c.capo.kappa = 0.5  # epsilon_crit = kappa * epsilon
    c.capo.gamma = 1.0  # beta_crit = beta * (1 + gamma * d), d = group disagreement
    c.capo.sensitivity = True  # local sensitivity token weights
    c.capo.alpha = 0.5  # weight 1 + alpha on tokens of sentences stating an observation
    c.capo.alpha_crit = 1.0  # 1 + alpha_crit for critical observations

    # Hierarchical reward (DESIGN §1.1); weights are normalised by their sum.
    c.reward = ml_collections.ConfigDict()
    c.reward.mode = "hierarchical"  # | "flat": fluency + correctness on the whole report (ablation)
    c.reward.w_flu = 1.0
    c.reward.w_cor = 2.0
    c.reward.w_con = 1.0
    c.reward.w_imp = 1.0
    c.reward.uncertain_as = "negative"  # negative | positive | half (uncertain labels in the F1s)
    c.reward.critical_weight = 2.0  # critical observations in correctness, impression, consistency
    c.reward.uncertain_penalty = 0.5  # consistency: an uncertain mismatch relative to a contradiction
    c.reward.nlg = ml_collections.ConfigDict(dict(bleu4=0.5, rouge_l=0.5, cider_d=0.0))
    c.reward.impression_rouge_weight = 0.5  # impression = (1-a)·label F1 + a·ROUGE-L
    c.reward.length_band = (0.5, 2.0)  # generated words / reference words
    c.reward.repeat_margin = 0.2  # allowed repeated-4-gram share above the reference's
    c.reward.gate_consistency = True  # consistency × sections gate
    c.reward.gate_consistency_critical = True  # consistency × "no critical reference finding missed"
    # report_f1: per-report F1 of the labels (report and Impression terms) | corpus_f1: each report's
    # leave-one-out share of its rollout batch's micro-F1, the evaluation's headline (why, and the
    # measured comparison: rewards/hierarchy.py and docs/results.md)
    c.reward.label_credit = "report_f1"

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 0  # 0 -> data.max_target_len
    c.eval.num_cases = 0  # 0 -> the whole split
    c.eval.normalize = "radflow"  # NLG text normaliser (metrics.NORMALIZERS); r2gen_iu / r2gen_mimic = R2Gen's cleaning
    c.eval.meteor = True  # pycocoevalcap METEOR needs Java (10-15 s start-up)
    return c


# Ablation rows (DESIGN §1.3): each adds one mechanism to the previous one.
VARIANTS = {
    "flat": dict(mode="flat", capo=False, sensitivity=False),
    "hierarchical": dict(mode="hierarchical", capo=False, sensitivity=False),
    "capo": dict(mode="hierarchical", capo=True, sensitivity=False),
    "full": dict(mode="hierarchical", capo=True, sensitivity=True),
}


def apply_overrides(c: ml_collections.ConfigDict, values: dict) -> None:
    """Sets ``{"section.field": value}`` pairs (the quick-run tables below)."""
    for dotted, value in values.items():
        section, key = dotted.split(".")
        c[section][key] = value


def apply_args(c: ml_collections.ConfigDict, arg: str | None, quick: dict, where: str) -> None:
    """Applies a config file's ``:arg`` — comma-separated words: ``quick`` and/or an ablation
    variant (``flat``, ``hierarchical``, ``capo``, ``full`` = RadFlow, the default)."""
    for word in filter(None, (arg or "").split(",")):
        if word == "quick":
            apply_overrides(c, quick)
        elif word in VARIANTS:
            v = VARIANTS[word]
            c.reward.mode, c.capo.enabled, c.capo.sensitivity = v["mode"], v["capo"], v["sensitivity"]
        else:
            raise ValueError(f"{where}: unknown argument {word!r}; known: quick, {', '.join(VARIANTS)}")


QUICK = {
    "vision.num_steps": 6, "vision.batch_size": 8, "vision.log_every": 3, "vision.checkpoint_every": 3,
    "data.num_train": 64, "data.num_val": 16, "data.num_test": 16, "model.size": "toy",
    "data.image_size": 64,
    "sft.num_steps": 12, "sft.batch_size": 8, "sft.log_every": 4, "sft.checkpoint_every": 6,
    "sft.length_bucket": 0,  # one padded length: one compilation of each step, not one per bucket
    "labeler.num_steps": 20, "labeler.batch_size": 16, "labeler.log_every": 10,
    "labeler.checkpoint_every": 10,
    "rl.num_steps": 4, "rl.batch_size": 4, "rl.group_size": 2, "rl.max_new_tokens": 48,
    "rl.log_every": 2, "rl.checkpoint_every": 2,
    "eval.num_cases": 16, "eval.batch_size": 8, "eval.max_new_tokens": 48, "eval.meteor": False,
}  # seconds-long smoke runs for tests and first tries

REAL_QUICK = {
    "vision.num_steps": 2, "vision.batch_size": 4, "vision.log_every": 1, "vision.checkpoint_every": 2,
    "data.image_size": 64, "data.num_workers": 0, "model.size": "toy",
    "sft.num_steps": 4, "sft.batch_size": 4, "sft.log_every": 2, "sft.checkpoint_every": 4,
    "rl.num_steps": 2, "rl.batch_size": 2, "rl.group_size": 2, "rl.max_new_tokens": 32,
    "rl.log_every": 1, "rl.checkpoint_every": 2,
    "eval.num_cases": 4, "eval.batch_size": 4, "eval.max_new_tokens": 32, "eval.meteor": False,
}  # smoke runs of the real-dataset configs on a few records


def _check(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {message}")


OPTIMIZER_FIELDS = ("num_steps", "learning_rate", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip")


def check_optimizer(section: ml_collections.ConfigDict, name: str) -> None:
    """The optimizer fields every training stage shares (``optim.make_optimizer`` reads them)."""
    missing = [f for f in OPTIMIZER_FIELDS if f not in section]
    _check(not missing, name, f"lacks optimizer fields {missing}")
    _check(section.num_steps >= 0, f"{name}.num_steps", "must be >= 0")
    _check(section.learning_rate > 0, f"{name}.learning_rate", "must be > 0")
    _check(section.warmup_steps >= 0, f"{name}.warmup_steps", "must be >= 0")
    _check(0 <= section.min_lr_ratio <= 1, f"{name}.min_lr_ratio", "must be in [0, 1]")
    _check(section.weight_decay >= 0, f"{name}.weight_decay", "must be >= 0")
    _check(section.grad_clip > 0, f"{name}.grad_clip", "must be > 0")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field and cross-field rule; returns the config locked against new keys."""
    _check(config.modality in schema.MODALITIES, "modality", f"must be one of {schema.MODALITIES}")
    schema.get_schema(config.modality, tuple(config.extra_critical))  # names extras it rejects
    stages = tuple(config.stages)
    unknown = [s for s in stages if s not in STAGES]
    _check(not unknown, "stages", f"unknown stages {unknown}; available: {STAGES}")
    _check(list(stages) == sorted(stages, key=STAGES.index), "stages", f"must follow the order {STAGES}")
    d = config.data
    _check(d.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}")
    _check(d.source == "synthetic" or bool(d.dir), "data.dir", "is required for real datasets")
    _check(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", "is required when data.source='tfds'")
    fr = tuple(d.split_fractions)
    _check(len(fr) == 3 and min(fr) >= 0 and abs(sum(fr) - 1) < 1e-6, "data.split_fractions",
           "must be 3 shares >= 0 summing to 1")
    for name in ("num_train", "num_val", "num_test"):
        _check(d[name] >= 0, f"data.{name}", "must be >= 0")
    _check(d.num_train > 0, "data.num_train", "must be > 0")
    _check(32 <= d.render_size <= 512, "data.render_size", "must be in [32, 512]")
    _check(32 <= d.image_size <= 1024, "data.image_size", "must be in [32, 1024]")
    _check(d.max_views >= 1, "data.max_views", "must be >= 1")
    _check(d.max_prompt_len >= 2, "data.max_prompt_len", "must be >= 2 (<bos> and one token)")
    _check(d.max_target_len >= 8, "data.max_target_len", "must be >= 8")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(
        d.section_fallback in SECTION_FALLBACKS, "data.section_fallback", f"one of {SECTION_FALLBACKS}"
    )
    _check(d.on_bad_record in ("error", "skip"), "data.on_bad_record", "must be 'error' or 'skip'")
    t = config.tokenizer
    _check(t.kind in TOKENIZER_KINDS, "tokenizer.kind", f"must be one of {TOKENIZER_KINDS}")
    _check(t.vocab_size >= 64, "tokenizer.vocab_size", "must be >= 64")
    _check(t.min_frequency >= 1, "tokenizer.min_frequency", "must be >= 1")
    _check(not config.init.from_hf or os.path.isdir(config.init.from_hf), "init.from_hf",
           f"folder not found: {config.init.from_hf}")
    m = config.model
    _check(m.size in MODEL_SIZES, "model.size", f"must be one of {MODEL_SIZES}")
    _check(m.dtype in MODEL_DTYPES, "model.dtype", f"must be one of {MODEL_DTYPES}")
    _check(m.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}")
    _check(m.layer_loop in LAYER_LOOPS, "model.layer_loop", f"must be one of {LAYER_LOOPS}")
    _check(m.logits_chunk >= 0, "model.logits_chunk", "must be >= 0 (0 = one chunk)")
    shape = dict(config.mesh.shape)
    _check(set(shape) <= {"data", "fsdp", "tensor"}, "mesh.shape", "axes are data, fsdp, tensor")
    _check(list(shape.values()).count(-1) <= 1, "mesh.shape", "at most one axis may be -1")
    from radflow_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
    from radflow_jax.rewards import hierarchy, labeler_train  # pylint: disable=import-outside-toplevel

    try:
        mesh_lib.validate_rules(config.mesh.rules)
    except ValueError as e:
        raise ConfigError(f"config.mesh.rules: {e}") from None
    for name in ("vision", "sft", "rl", "labeler"):
        check_optimizer(config[name], name)
    v = config.vision
    _check(v.num_steps >= 1 and v.batch_size >= 1, "vision.num_steps", ">= 1 (and vision.batch_size >= 1)")
    _check(v.labels in ("reports", "dataset"), "vision.labels", "must be 'reports' or 'dataset'")
    _check(v.log_every >= 1, "vision.log_every", "must be >= 1")
    _check(v.checkpoint_every >= 1 and v.keep_checkpoints >= 1, "vision.checkpoint_every",
           "and vision.keep_checkpoints must be >= 1")
    s = config.sft
    _check(s.batch_size >= 1, "sft.batch_size", "must be >= 1")
    _check(s.grad_accum >= 1, "sft.grad_accum", "must be >= 1")
    _check(s.batch_size % s.grad_accum == 0, "sft.grad_accum", "must divide sft.batch_size")
    _check(s.log_every >= 1 and s.checkpoint_every >= 1, "sft.log_every", "and checkpoint_every >= 1")
    try:
        labeler_train.check_labeler_config(config.labeler)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    r = config.rl
    _check(r.group_size >= 2, "rl.group_size", "must be >= 2 (advantages are group-relative)")
    _check(r.batch_size >= 1 and r.num_steps >= 0, "rl.batch_size", ">= 1 (and rl.num_steps >= 0)")
    _check(r.loss_type in ("grpo", "dr_grpo", "dapo"), "rl.loss_type", "grpo, dr_grpo or dapo")
    _check(r.scale_rewards in ("group", "batch", "none"), "rl.scale_rewards", "group, batch or none")
    _check(r.temperature > 0, "rl.temperature", "must be > 0")
    _check(0 < r.top_p <= 1 and r.top_k >= 0, "rl.top_p", "in (0, 1] (and top_k >= 0)")
    _check(r.num_iterations >= 1, "rl.num_iterations", "must be >= 1")
    _check(r.epsilon > 0 and r.epsilon_high > 0 and r.beta >= 0, "rl.epsilon", "> 0 (beta >= 0)")
    _check(0 < config.capo.kappa <= 1, "capo.kappa", "must be in (0, 1]")
    _check(config.reward.nlg.cider_d == 0, "reward.nlg.cider_d", "CIDEr-D in the RL reward is not wired yet")
    try:
        hierarchy.reward_config_from(config.reward, schema.get_schema(config.modality))
    except ValueError as e:
        raise ConfigError(f"config.reward: {e}") from None
    e = config.eval
    _check(e.split in ("train", "val", "test"), "eval.split", "must be train, val or test")
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(e.normalize in NORMALIZERS, "eval.normalize", f"must be one of {NORMALIZERS}")
    _check(e.max_new_tokens >= 0 and e.num_cases >= 0, "eval.max_new_tokens", "and num_cases >= 0")
    config.lock()
    return config


def resolve_workdir(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    """The run folder: the --workdir flag, else config.workdir, else runs/<modality>."""
    return os.path.abspath(workdir or config.workdir or os.path.join("runs", config.modality))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]`` the way ``config_flags`` does, for checks before flag parsing."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_radflow_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def check_overrides(argv: list[str], default_spec: str) -> None:
    """Rejects ``--config.a.b=...`` for fields the config lacks, naming the fields it has.

    ``config_flags`` would otherwise fail with a bare ``AttributeError`` from inside its parser.
    """
    spec = default_spec
    for arg in argv:
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not overrides:
        return
    config = load_config_file(spec)
    for dotted in overrides:
        node, walked = config, "config"
        for key in dotted.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(
                    f"unknown field {walked}.{key} (in --config.{dotted}); fields of {walked}: {fields}"
                )
            node, walked = node[key], f"{walked}.{key}"


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A run's ``config.json`` on top of today's defaults, so fields added since still resolve."""
    config = base_config()

    def merge(node: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                merge(node[key], value)
            else:
                node[key] = value

    merge(config, saved)
    return config
