"""GRPO: loss == NumPy reference per aggregation, clip/KL boundaries, advantages and their edge cases."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radflow_jax.rl.grpo import LOSS_TYPES, group_advantages, grpo_loss

N, T, MAX_LEN = 4, 6, 8


def reference_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, weights, loss_type, truncated):
    """TRL's _compute_loss written out in float64 NumPy (min/clip form, per-row settings)."""
    logp, old, ref, adv = (np.asarray(x, np.float64) for x in (logp, old, ref, adv))
    mask = np.asarray(mask, np.float64)
    if truncated is not None:
        mask = mask * ~np.asarray(truncated)[:, None]
    col = lambda x: np.broadcast_to(np.asarray(x, np.float64), (len(adv),))[:, None]  # noqa: E731
    eps_low, eps_high, beta, a = col(eps_low), col(eps_high), col(beta), adv[:, None]
    ratio = np.exp(logp - old)
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
    pg = -surrogate * (1.0 if weights is None else weights)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per_token = (pg + beta * kl) * mask
    if loss_type == "grpo":
        loss = (per_token.sum(1) / np.maximum(mask.sum(1), 1)).mean()
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (len(adv) * MAX_LEN)
    else:
        loss = per_token.sum() / max(mask.sum(), 1)
    low = (ratio < 1 - eps_low) & (a < 0)
    high = (ratio > 1 + eps_high) & (a > 0)
    total = max(mask.sum(), 1)
    aux = {
        "kl": (kl * mask).sum() / total,
        "ratio_mean": (ratio * mask).sum() / total,
        "clip_ratio/low_mean": (low * mask).sum() / total,
        "clip_ratio/high_mean": (high * mask).sum() / total,
        "clip_ratio/region_mean": ((low | high) * mask).sum() / total,
    }
    return loss, aux


@pytest.fixture(scope="module")
def batch():
    """Hand-made batch: lengths 6/3/1/5 and ratios spread well past a 0.2 clip range."""
    rng = np.random.default_rng(0)
    old = rng.normal(-2.0, 0.5, (N, T)).astype(np.float32)
    logp = (old + rng.normal(0.0, 0.3, (N, T))).astype(np.float32)
    ref = (old + rng.normal(0.0, 0.2, (N, T))).astype(np.float32)
    mask = np.arange(T)[None, :] < np.array([6, 3, 1, 5])[:, None]
    return dict(
        logp=logp,
        old=old,
        ref=ref,
        adv=np.array([1.3, -0.7, 0.4, -1.1], np.float32),
        mask=mask,
        weights=rng.uniform(0.5, 2.0, (N, T)).astype(np.float32),
        truncated=np.array([False, True, False, False]),
    )


SETTINGS = {
    "scalar": dict(epsilon_low=0.2, epsilon_high=0.28, beta=0.04),
    "per_sample": dict(
        epsilon_low=np.array([0.2, 0.1, 0.2, 0.05], np.float32),
        epsilon_high=np.array([0.28, 0.14, 0.28, 0.07], np.float32),
        beta=np.array([0.04, 0.1, 0.0, 0.2], np.float32),
    ),
}


@pytest.mark.parametrize(
    "loss_type, weighted, settings, mask_truncated",
    list(itertools.product(LOSS_TYPES, (False, True), SETTINGS, (False, True))),
)
def test_loss_matches_numpy_reference(batch, loss_type, weighted, settings, mask_truncated):
    kw = SETTINGS[settings]
    weights = batch["weights"] if weighted else None
    loss, aux = grpo_loss(
        jnp.asarray(batch["logp"]), jnp.asarray(batch["old"]), jnp.asarray(batch["ref"]),
        jnp.asarray(batch["adv"]), jnp.asarray(batch["mask"]),
        token_weights=None if weights is None else jnp.asarray(weights),
        loss_type=loss_type, max_completion_length=MAX_LEN,
        truncated=jnp.asarray(batch["truncated"]), mask_truncated_completions=mask_truncated, **kw,
    )  # fmt: skip
    want, want_aux = reference_loss(
        batch["logp"], batch["old"], batch["ref"], batch["adv"], batch["mask"],
        kw["epsilon_low"], kw["epsilon_high"], kw["beta"], weights, loss_type,
        batch["truncated"] if mask_truncated else None,
    )  # fmt: skip
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-6)
    for key, value in want_aux.items():
        np.testing.assert_allclose(float(aux[key]), value, rtol=1e-6, atol=1e-6, err_msg=key)
    assert 0 < want_aux["clip_ratio/region_mean"] < 1  # the batch really exercises clipping


def test_aggregations_differ_and_truncated_rows_drop_out(batch):
    common = dict(epsilon_low=0.2, epsilon_high=0.2, beta=0.0, max_completion_length=MAX_LEN)
    args = [jnp.asarray(batch[k]) for k in ("logp", "old", "ref", "adv", "mask")]
    losses = {lt: float(grpo_loss(*args, loss_type=lt, **common)[0]) for lt in LOSS_TYPES}
    assert len(set(losses.values())) == 3
    # Masking row 1 as truncated == zeroing its mask by hand (and it still counts in N).
    masked = np.array(batch["mask"])
    masked[1] = False
    for lt in LOSS_TYPES:
        a = grpo_loss(*args, loss_type=lt, truncated=jnp.asarray(batch["truncated"]),
                      mask_truncated_completions=True, **common)[0]
        b = grpo_loss(*args[:4], jnp.asarray(masked), loss_type=lt, **common)[0]
        assert float(a) == float(b)
    with pytest.raises(ValueError, match="truncated"):
        grpo_loss(*args, loss_type="grpo", mask_truncated_completions=True, **common)


def _boundary_batch():
    """Two rows (A=+1, A=-1) whose tokens sit at, just past, and inside the clip bounds.

    eps_high / eps_low are derived from the float32 ratios themselves, so tokens 0 and 1 are at
    ratio == 1 + eps_high and ratio == 1 - eps_low exactly.
    """
    logp = jnp.asarray(np.tile(np.float32([0.2, -0.2, 0.2 + 1e-3, -0.2 - 1e-3, 0.05]), (2, 1)))
    old = jnp.zeros_like(logp)
    ratio = np.asarray(jnp.exp(logp - old))
    eps_high, eps_low = np.float32(ratio[0, 0] - 1), np.float32(1 - ratio[0, 1])
    assert 1 + eps_high == ratio[0, 0] and 1 - eps_low == ratio[0, 1]
    return logp, old, ratio, eps_low, eps_high


@pytest.mark.parametrize("weighted", [False, True])
def test_clipping_boundaries_and_gradients(weighted):
    logp, old, ratio, eps_low, eps_high = _boundary_batch()
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones(logp.shape, bool)
    weights = jnp.asarray(np.float32([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])) if weighted else None

    def loss_fn(lp):
        return grpo_loss(lp, old, lp, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high, beta=0.0,
                         token_weights=weights, loss_type="dapo", max_completion_length=5)

    (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    # Clipped: A>0 just above 1+eps_high (row 0, token 2); A<0 just below 1-eps_low (row 1, token 3).
    clipped = np.zeros(logp.shape, bool)
    clipped[0, 2] = clipped[1, 3] = True
    w = np.ones(logp.shape) if weights is None else np.asarray(weights)
    a = np.asarray(adv)[:, None]
    want_grad = np.where(clipped, 0.0, -a * ratio * w / logp.size)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(grad)[clipped] == 0.0)
    assert np.all(np.asarray(grad)[~clipped] != 0.0)  # exactly at the bound the gradient still flows
    want, _ = reference_loss(logp, old, logp, adv, mask, eps_low, eps_high, 0.0,
                             None if weights is None else w, "dapo", None)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-7)
    # At the bound itself nothing counts as clipped (strict inequalities, as in TRL).
    assert float(aux["clip_ratio/high_mean"]) == float(aux["clip_ratio/low_mean"]) == np.float32(0.1)
    assert float(aux["clip_ratio/region_mean"]) == np.float32(0.2)


def test_single_iteration_ratio_is_one_and_gradient_flows():
    """num_iterations == 1: old_logp == logp (as stop_gradient) -> ratio 1, grad = -A / len."""
    logp = jnp.asarray(np.float32([[-1.0, -2.0, -0.5], [-0.3, -0.1, -4.0]]))
    adv, mask = jnp.array([0.5, -2.0]), jnp.array([[True, True, False], [True, True, True]])

    def loss_fn(lp):
        return grpo_loss(lp, jax.lax.stop_gradient(lp), lp, adv, mask, epsilon_low=0.2,
                         epsilon_high=0.2, beta=0.1, loss_type="grpo", max_completion_length=3)

    (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    assert float(aux["ratio_mean"]) == 1.0 and float(aux["clip_ratio/region_mean"]) == 0.0
    want = -np.array([[0.5 / 2, 0.5 / 2, 0.0], [-2.0 / 3] * 3]) / 2
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6)
    np.testing.assert_allclose(float(loss), -(0.5 - 2.0) / 2, rtol=1e-6)


def test_kl_k3_zero_at_reference_positive_elsewhere_and_unweighted():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(rng.normal(-2, 0.5, (3, 4)).astype(np.float32))
    mask, zero_adv = jnp.ones((3, 4), bool), jnp.zeros(3)
    kw = dict(epsilon_low=0.2, epsilon_high=0.2, beta=0.5, loss_type="dapo", max_completion_length=4)

    def loss_fn(lp, ref, weights=None):
        return grpo_loss(lp, logp, ref, zero_adv, mask, token_weights=weights, **kw)

    (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp, logp)
    assert float(loss) == 0.0 and float(aux["kl"]) == 0.0
    assert np.all(np.asarray(grad) == 0.0)  # k3 has its minimum at the reference
    for shift in (-0.3, 0.3):
        ref = logp + shift
        loss, aux = loss_fn(logp, ref)
        k3 = np.exp(shift) - shift - 1
        np.testing.assert_allclose(float(aux["kl"]), k3, rtol=1e-5)
        np.testing.assert_allclose(float(loss), 0.5 * k3, rtol=1e-5)
        assert float(aux["kl"]) > 0
        weights = jnp.asarray(rng.uniform(0.1, 3.0, (3, 4)).astype(np.float32))
        assert float(loss_fn(logp, ref, weights)[0]) == float(loss)  # weights never touch the KL


def test_empty_masks_give_finite_zero_loss():
    z = jnp.zeros((2, 3))
    for lt in LOSS_TYPES:
        loss, aux = grpo_loss(z, z, z, jnp.array([1.0, -1.0]), jnp.zeros((2, 3), bool), epsilon_low=0.2,
                              epsilon_high=0.2, beta=0.1, loss_type=lt, max_completion_length=3)
        assert float(loss) == 0.0
        assert all(np.isfinite(float(v)) for v in aux.values())


def test_loss_rejects_bad_arguments():
    z = jnp.zeros((2, 3))
    kw = dict(epsilon_low=0.2, epsilon_high=0.2, beta=0.0, max_completion_length=3)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(z, z, z, jnp.zeros(2), z, loss_type="ppo", **kw)
    with pytest.raises(ValueError, match="epsilon_low"):
        grpo_loss(z, z, z, jnp.zeros(2), z, **{**kw, "epsilon_low": jnp.zeros(3)})
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(z, z, z, jnp.zeros(2), z, loss_type="dr_grpo", **{**kw, "max_completion_length": 2})
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(z, z, z, jnp.zeros(3), z, **kw)


# ------------------------------------------------------------------------------------ advantages


def reference_advantages(rewards, g, scale):
    r = np.asarray(rewards, np.float64).reshape(-1, g)
    centered = r - r.mean(1, keepdims=True)
    if scale == "group":
        centered = centered / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    elif scale == "batch":
        centered = centered / (r.std(ddof=1) + 1e-4)
    return centered.reshape(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_numpy(scale):
    rewards = np.random.default_rng(2).uniform(0, 1, 12).astype(np.float32)
    got = np.asarray(group_advantages(jnp.asarray(rewards), 4, scale=scale))
    np.testing.assert_allclose(got, reference_advantages(rewards, 4, scale), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.reshape(3, 4).sum(1), 0.0, atol=1e-5)  # centered per group


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_groups_get_exactly_zero(scale):
    # 0.1 * 3 / 3 != 0.1 in float32: the mean alone would leave a residue of ~1e-9 / 1e-4.
    rewards = jnp.array([0.1, 0.1, 0.1, 0.9, 0.2, 0.5, 0.7, 0.7, 0.7], jnp.float32)
    got = np.asarray(group_advantages(rewards, 3, scale=scale))
    assert np.all(got[:3] == 0.0) and np.all(got[6:] == 0.0)
    assert np.all(got[3:6] != 0.0) and np.all(np.isfinite(got))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_rewards_and_singleton_groups_are_finite_zero(scale):
    for rewards, g in ((jnp.full(8, 0.3), 4), (jnp.array([0.2, 0.9, 0.4]), 1), (jnp.array([0.5]), 1)):
        got = np.asarray(group_advantages(rewards, g, scale=scale))
        assert np.all(got == 0.0), (rewards, g, got)


def test_advantages_reject_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(jnp.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(jnp.zeros(5), 2)


def test_jit_with_static_settings():
    """The trainer binds the config with functools.partial and jits; this must trace cleanly."""
    rng = np.random.default_rng(3)
    lp = jnp.asarray(rng.normal(-1, 0.3, (4, 5)).astype(np.float32))
    mask = jnp.ones((4, 5), bool)

    @jax.jit
    def step(lp, rewards, eps):
        adv = group_advantages(rewards, 2, scale="group")
        return grpo_loss(lp, lp + 0.1, lp - 0.1, adv, mask, epsilon_low=eps, epsilon_high=eps, beta=0.04,
                         loss_type="dr_grpo", max_completion_length=5)

    loss, _ = step(lp, jnp.array([0.0, 1.0, 0.5, 0.5]), jnp.full(4, 0.2))
    eager, _ = grpo_loss(lp, lp + 0.1, lp - 0.1, group_advantages(jnp.array([0.0, 1.0, 0.5, 0.5]), 2),
                         mask, epsilon_low=jnp.full(4, 0.2), epsilon_high=jnp.full(4, 0.2), beta=0.04,
                         loss_type="dr_grpo", max_completion_length=5)
    np.testing.assert_allclose(float(loss), float(eager), rtol=1e-6)
