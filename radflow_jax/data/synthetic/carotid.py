"""Synthetic carotid duplex ultrasound: findings sampling, screen rendering and ``generate_case``.

Each study has two views (right and left duplex). A view is laid out like a scanner screen: the top
~60 % is a longitudinal B-mode image of the bifurcation (CCA continuing into the bulb and ICA, the ECA
branching off superficially), the bottom ~40 % the ICA spectral Doppler strip. Findings follow the
SRU consensus criteria (Grant et al., Radiology 2003), so velocities, lumen narrowing and report
wording agree by construction; only the given ``numpy`` Generator is used, so a case is a pure
function of ``(seed, index)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow_jax.data.synthetic import carotid_report
from radflow_jax.data.synthetic.case import Case
from radflow_jax import schema

SIDES: tuple[str, ...] = ("right", "left")
VIEWS: tuple[str, ...] = ("right duplex", "left duplex")
BMODE_FRACTION = 0.6  # share of the screen height given to the B-mode image
BASELINE_FRACTION = 0.78  # Doppler baseline position inside the strip, from its top
DEPTH_MM = 30.0  # imaged depth of the B-mode panel (its width is then ~50 mm)
TICK_STEP_CM_S = 50  # Doppler velocity scale tick spacing; a longer tick every 100 cm/s

# Per-side grade frequencies (normal, <50, 50-69, >=70, near-occlusion, occlusion) as cut points on a
# standard normal "atherosclerotic burden": Phi^-1 of the cumulative .35/.65/.80/.92/.95.
_GRADE_CUTS = np.array([-0.3853, 0.3853, 0.8416, 1.4051, 1.6449])
_SIDE_CORRELATION = 0.7  # atherosclerosis is systemic: the two sides share most of their burden
_SUBTLE_PROB = 0.15

# SRU bands, drawn with margins so rounded values stay strictly inside them.
_PSV = {"normal": (45, 118), "<50%": (60, 122), "50-69%": (128, 226), ">=70%": (236, 480)}
_EDV = {"normal": (10, 35), "<50%": (14, 38), "50-69%": (42, 98), ">=70%": (104, 230)}
_RATIO = {"normal": (0.6, 1.8), "<50%": (0.7, 1.9), "50-69%": (2.1, 3.9), ">=70%": (4.1, 8.0)}
_REDUCTION = {
    "normal": (0.0, 0.0),
    "<50%": (0.2, 0.45),
    "50-69%": (0.5, 0.69),
    ">=70%": (0.7, 0.9),
    "near-occlusion": (0.91, 0.96),
    "occlusion": (1.0, 1.0),
}
_NOMINAL_DIAMETER_MM = 6.5
_ECHOGENICITY = ("hypoechoic", "isoechoic", "hyperechoic", "calcified")
_PLAQUE_AMPLITUDE = {"hypoechoic": 0.13, "isoechoic": 0.33, "hyperechoic": 0.62, "calcified": 0.95}
_SCALES_CM_S = (50, 100, 150, 200, 250, 300, 400, 500, 600)


# ----------------------------------------------------------------------------- findings sampling


def _velocities(rng: np.random.Generator, grade: str, subtle: bool) -> dict[str, Any]:
    """ICA/CCA velocities inside the grade's SRU band (near a band edge when ``subtle``)."""
    if grade == "occlusion":
        return {"psv": 0, "edv": 0, "ica_cca_ratio": 0.0, "cca_psv": int(rng.integers(50, 81)),
                "waveform": "absent"}
    if grade == "near-occlusion":
        waveform = str(rng.choice(["string", "low", "high"], p=[0.45, 0.3, 0.25]))
        psv_lo, psv_hi, edv_frac = {"string": (12, 45, 0.3), "low": (35, 90, 0.35),
                                    "high": (250, 500, 0.45)}[waveform]
        psv = int(rng.integers(psv_lo, psv_hi + 1))
        edv = int(round(psv * edv_frac * rng.uniform(0.2, 1.0)))
        cca = int(rng.integers(50, 91))
        return {"psv": psv, "edv": edv, "ica_cca_ratio": round(psv / cca, 1), "cca_psv": cca,
                "waveform": waveform}
    u = rng.uniform()  # position inside the band, 0 = lower edge
    if subtle:  # borderline: close to an edge shared with a neighbouring band
        if grade == "<50%":
            u = 0.85 + 0.15 * u
        elif grade == ">=70%":
            u = 0.08 * u
        else:
            u = 0.12 * u if u < 0.5 else 0.76 + 0.24 * u
    psv_lo, psv_hi = _PSV[grade]
    psv = int(round(psv_lo + u * (psv_hi - psv_lo)))
    edv_lo, edv_hi = _EDV[grade]
    u_edv = float(np.clip(u + 0.15 * rng.standard_normal(), 0.0, 1.0))
    edv = int(round(edv_lo + u_edv * (min(edv_hi, 0.6 * psv) - edv_lo)))
    r_lo, r_hi = _RATIO[grade]
    cca_lo, cca_hi = int(np.ceil(max(50, psv / r_hi))), int(np.floor(min(110, psv / r_lo)))
    cca = int(rng.integers(cca_lo, cca_hi + 1))
    waveform = "normal" if grade in ("normal", "<50%") else "stenotic"
    return {"psv": psv, "edv": edv, "ica_cca_ratio": round(psv / cca, 1), "cca_psv": cca,
            "waveform": waveform}


def _plaque(rng: np.random.Generator, grade: str, reduction: float, subtle: bool) -> dict | None:
    """Plaque attributes; sized so its thickness accounts for the lumen reduction."""
    if grade == "normal" or (grade == "occlusion" and rng.uniform() < 0.2):
        return None  # an occlusion may be thrombus or dissection without a discrete plaque
    severe = grade != "<50%"
    echo = str(rng.choice(_ECHOGENICITY, p=[0.25, 0.25, 0.3, 0.2]))
    texture = "heterogeneous" if rng.uniform() < (0.55 if severe else 0.3) else "homogeneous"
    if severe:
        location = str(rng.choice(["bulb", "proximal ICA"], p=[0.55, 0.45]))
        far_share = rng.uniform(0.55, 0.75)
        length = int(rng.integers(10, 25))
    else:
        location = str(rng.choice(["bulb", "proximal ICA", "distal CCA"], p=[0.5, 0.3, 0.2]))
        far_share = 1.0
        length = int(rng.integers(3, 6)) if subtle else int(rng.integers(5, 15))
    thickness = round(max(reduction, 0.15) * _NOMINAL_DIAMETER_MM * far_share, 1)
    return {"echogenicity": echo, "texture": texture, "length_mm": length,
            "thickness_mm": thickness, "location": location}


def _imt(rng: np.random.Generator, burden: float) -> tuple[float, bool]:
    """Intima-media thickness (never exactly the 1.0 mm threshold) and whether it is borderline."""
    imt = round(float(np.clip(0.85 + 0.2 * burden + 0.13 * rng.standard_normal(), 0.4, 1.9)), 1)
    if imt == 1.0:
        imt = 0.9 if rng.uniform() < 0.5 else 1.1
    return imt, bool(imt == 1.1 and rng.uniform() < 0.35)


def sample_side(rng: np.random.Generator, grade: str, burden: float) -> dict[str, Any]:
    """All findings of one side for a given SRU grade (JSON-serialisable)."""
    if grade not in schema.STENOSIS_GRADES:
        raise ValueError(f"grade must be one of {schema.STENOSIS_GRADES}, got {grade!r}")
    subtle = grade != "normal" and bool(rng.uniform() < _SUBTLE_PROB)
    side: dict[str, Any] = {"grade": grade, "subtle": subtle}
    side.update(_velocities(rng, grade, subtle))
    lo, hi = _REDUCTION[grade]
    if subtle and grade == "<50%":
        lo, hi = 0.12, 0.2
    side["lumen_reduction"] = round(float(rng.uniform(lo, hi)), 2)
    side["plaque"] = _plaque(rng, grade, side["lumen_reduction"], subtle)
    side["subtle_plaque"] = subtle and grade == "<50%"
    side["imt_mm"], side["subtle_imt"] = _imt(rng, burden)
    side["poor_window"] = bool(
        (subtle and (grade in ("near-occlusion", "occlusion") or rng.uniform() < 0.5))
        or rng.uniform() < 0.05
    )
    return side


def sample_findings(rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Both sides, correlated through a shared atherosclerotic burden."""
    shared = rng.standard_normal()
    own = rng.standard_normal(2)
    burden = _SIDE_CORRELATION * shared + np.sqrt(1 - _SIDE_CORRELATION**2) * own
    grades = np.searchsorted(_GRADE_CUTS, burden)
    return {
        name: sample_side(rng, schema.STENOSIS_GRADES[int(g)], float(b))
        for name, g, b in zip(SIDES, grades, burden)
    }


def labels_from_findings(sides: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Ground-truth labels: 1 present, -1 present but hedged (subtle), 0 absent."""
    labels = {obs: schema.NEGATIVE for obs in schema.CAROTID_OBSERVATIONS}
    for name, side in sides.items():
        cap = name.capitalize()
        if side["plaque"] is not None:
            labels[f"{cap} Plaque"] = -1 if side["subtle_plaque"] else 1
        if side["imt_mm"] > 1.0:
            labels[f"{cap} Intima-Media Thickening"] = -1 if side["subtle_imt"] else 1
        band = schema.carotid_stenosis_observation(cap, side["grade"])
        if band is not None:
            labels[band] = -1 if side["subtle"] else 1
    labels["No Finding"] = int(all(v == 0 for k, v in labels.items() if k != "No Finding"))
    return labels


# ----------------------------------------------------------------------------- rendering helpers


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _resize(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a coarse (..., gh, gw) grid to (..., h, w)."""
    gh, gw = grid.shape[-2:]
    yi = np.linspace(0, gh - 1, h, dtype=np.float32)
    xi = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0 = np.minimum(yi.astype(np.int32), gh - 2)
    x0 = np.minimum(xi.astype(np.int32), gw - 2)
    fy, fx = (yi - y0)[:, None], (xi - x0)[None, :]
    rows = grid[..., y0, :] * (1 - fy) + grid[..., y0 + 1, :] * fy
    return rows[..., x0] * (1 - fx) + rows[..., x0 + 1] * fx


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth zero-mean unit-ish noise with about ``cells`` blobs per side."""
    return _resize(rng.standard_normal((cells + 1, cells + 1), dtype=np.float32), h, w)


def _speckle(rng: np.random.Generator, h: int, w: int, mm_per_px: float) -> np.ndarray:
    """Rayleigh speckle of mean ~1 whose grain has a fixed physical size (0.25 x 0.45 mm)."""
    gh = max(2, min(h, int(DEPTH_MM / 0.25)))
    gw = max(2, min(w, int(w * mm_per_px / 0.45)))
    field = _resize(rng.standard_normal((2, gh, gw), dtype=np.float32), h, w)
    amplitude = np.sqrt(field[0] ** 2 + field[1] ** 2)
    return amplitude / max(float(amplitude.mean()), 1e-6)


def _geometry(rng: np.random.Generator) -> dict[str, float]:
    """Per-view anatomy in millimetres: bifurcation position, calibres, branch divergence."""
    return {
        "zc": rng.uniform(13.0, 17.0),  # CCA centre depth
        "xb": rng.uniform(17.0, 24.0),  # flow divider position
        "slope": rng.uniform(-0.06, 0.06),
        "r_cca": rng.uniform(3.0, 3.6),
        "r_ica": rng.uniform(2.5, 3.0),
        "bulb": rng.uniform(0.6, 1.2),
        "r_eca": rng.uniform(1.7, 2.2),
        "ica_drop": rng.uniform(2.5, 4.5),
        "eca_rise": rng.uniform(5.0, 6.5),
    }


def _wall_profile(d: np.ndarray, imt: float, near: bool) -> np.ndarray:
    """Echo amplitude at ``d`` mm outside the lumen: the intima-media double line, adventitia."""
    gain = 0.7 if near else 1.0
    knots = [0.0, 0.22, 0.3, imt - 0.1, imt, imt + 0.8, imt + 1.2]
    values = [0.75, 0.75, 0.16, 0.16, 1.0, 0.95, 0.4]
    return gain * np.interp(d, knots, values).astype(np.float32)


# ----------------------------------------------------------------------------- B-mode


def _bmode(rng: np.random.Generator, side: dict[str, Any], h: int, w: int) -> np.ndarray:
    """Longitudinal B-mode of the bifurcation with the Doppler cursor and gate on the ICA."""
    mm = DEPTH_MM / h
    g = _geometry(rng)
    xs = (np.arange(w, dtype=np.float32) + 0.5) * mm
    z = ((np.arange(h, dtype=np.float32) + 0.5) * mm)[:, None]
    xb = g["xb"]
    axis = g["zc"] + g["slope"] * (xs - xb)
    c_main = axis + g["ica_drop"] * _smoothstep((xs - xb + 2.0) / 16.0)
    r_main = (g["r_cca"] + (g["r_ica"] - g["r_cca"]) * _smoothstep((xs - xb) / 10.0)
              + g["bulb"] * np.exp(-(((xs - xb - 3.0) / 4.5) ** 2)))
    c_eca = axis - g["eca_rise"] * _smoothstep((xs - xb + 1.0) / 14.0)
    r_eca = g["r_eca"] * _smoothstep((xs - xb + 1.5) / 3.0)

    # Plaque: an elliptical bump on the far (deep) wall, plus the near wall when >= 50 %.
    plaque, reduction = side["plaque"], side["lumen_reduction"]
    x0 = xb + {"distal CCA": -8.0, "bulb": 2.5, "proximal ICA": 9.0}[
        plaque["location"] if plaque else "bulb"]
    half = (plaque["length_mm"] if plaque else 14.0) / 2.0
    bump = np.sqrt(np.clip(1.0 - ((xs - x0) / half) ** 2, 0.0, 1.0))
    p_far = bump * (plaque["thickness_mm"] if plaque else 0.0)
    p_near = bump * np.maximum(reduction * 2.0 * r_main - p_far, 0.0)
    occluded = (xs > x0 - 0.5 * half) if side["grade"] == "occlusion" else np.zeros_like(xs, bool)
    if side["grade"] == "near-occlusion":  # keep a string of lumen at least ~0.7 px wide
        residual = np.maximum(2.0 * r_main * (1.0 - reduction), 0.7 * mm)
        p_near = np.minimum(p_near, np.maximum(2.0 * r_main - residual - p_far, 0.0))

    dz = z - c_main
    dze = z - c_eca
    amp = 0.30 + 0.07 * _lowfreq(rng, h, w, 4)  # soft tissue with slowly varying echogenicity
    for depth in rng.uniform(1.0, DEPTH_MM, size=4):  # fascial planes
        plane = np.exp(-(((z - depth) / 0.35) ** 2))
        amp = amp + 0.35 * plane * (0.6 + 0.4 * _lowfreq(rng, 1, w, 3))
    amp = amp + 0.5 * np.exp(-z / 0.8)  # skin / near-field reverberation

    for dist, rad, scale in ((dz, r_main, 1.0), (dze, r_eca, 0.8)):  # far then near walls
        imt = scale * side["imt_mm"]
        for d, near in ((dist - rad, False), (-dist - rad, True)):
            wall = (rad > 0.2) & (d > 0.0) & (d < imt + 1.2)
            amp = np.where(wall, _wall_profile(d, imt, near), amp)

    in_main = np.abs(dz) < r_main
    lumen = (dz > -r_main + p_near) & (dz < r_main - p_far) & ~occluded
    eca_lumen = (np.abs(dze) < r_eca) & (r_eca > 0.2)
    plaque_mask = in_main & ~lumen & ~eca_lumen & ((bump > 0) | occluded)
    texture = _lowfreq(rng, h, w, 12)
    atheroma = plaque_mask & (bump > 0) & (plaque is not None)
    if plaque is not None:
        level = _PLAQUE_AMPLITUDE[plaque["echogenicity"]]
        mottle = 0.55 if plaque["texture"] == "heterogeneous" else 0.12
        amp = np.where(atheroma, level * (1.0 + mottle * texture), amp)
    # echogenic thrombus filling the occluded lumen beyond the plaque
    amp = np.where(plaque_mask & occluded & ~atheroma, 0.3 + 0.1 * texture, amp)
    haze = 0.1 if side["poor_window"] else 0.02
    amp = np.where(lumen | eca_lumen, haze * (1.0 + texture), amp)

    if plaque is not None and plaque["echogenicity"] == "calcified":
        start, stop = rng.uniform(0.1, 0.8, size=2)  # focal calcification of the far-wall plaque
        focal = (bump > 0.3) & (xs > x0 - start * half) & (xs < x0 + stop * half)
        calcified = atheroma & (dz > 0) & focal
        top = np.where(calcified.any(axis=0), np.argmax(calcified, axis=0), h)
        rows = np.arange(h)[:, None]
        amp = np.where(calcified & (rows < top + max(1, round(1.0 / mm))), 1.0, amp)
        amp = np.where(rows > top + max(1, round(1.2 / mm)), amp * 0.18, amp)  # acoustic shadow

    attenuation = rng.uniform(0.025, 0.04) * (1.8 if side["poor_window"] else 1.0)
    gain = rng.uniform(0.85, 1.05) * (0.75 if side["poor_window"] else 1.0)
    img = amp * _speckle(rng, h, w, mm) * np.exp(-attenuation * z) * gain
    if side["poor_window"]:
        img = img + 0.12 * rng.standard_exponential((h, w), dtype=np.float32)
    img = np.clip(img, 0.0, 1.4) ** 0.75 / 1.4**0.75

    # Depth markers every 5 mm and the Doppler cursor with its sample-volume gate.
    marks = np.round(np.arange(5.0, DEPTH_MM, 5.0) / mm).astype(int)
    img[marks, w - 2:] = 0.8
    if side["grade"] == "occlusion" or plaque is None:
        gx = xb + 8.0
        gz = float(np.interp(gx, xs, c_main))
    else:
        gx = x0
        gz = float(np.interp(gx, xs, c_main + 0.5 * (p_near - p_far)))
    col = min(w - 1, int(gx / mm))
    gate_top, gate_bottom = int((gz - 1.0) / mm), int((gz + 1.0) / mm)
    img[0:max(gate_top, 0):2, col] = 0.7
    span = slice(max(col - max(1, int(1.2 / mm)), 0), col + max(1, int(1.2 / mm)) + 1)
    img[np.clip([gate_top, gate_bottom], 0, h - 1), span] = 0.9
    return img


# ----------------------------------------------------------------------------- spectral Doppler


def _envelope(phase: np.ndarray, psv: float, edv: float, waveform: str,
              rng: np.random.Generator) -> np.ndarray:
    """Maximum velocity over one cardiac cycle: sharp low-resistance ICA upstroke, dicrotic notch,
    diastolic run-off; rounded and delayed (tardus-parvus) for dampened near-occlusion flow."""
    d = psv - edv
    if waveform in ("string", "low"):
        knots = [0.0, 0.26, 0.45, 1.0]
        values = [edv, psv, edv + 0.5 * d, edv]
    else:
        tp = rng.uniform(0.09, 0.12) + (0.03 if waveform != "normal" else 0.0)
        notch = rng.uniform(0.25, 0.35)
        knots = [0.0, tp, tp + 0.07, 0.31, 0.35, 0.41, 0.6, 1.0]
        values = [edv, psv, edv + 0.62 * d, edv + notch * d, edv + (notch - 0.07) * d,
                  edv + (notch + 0.05) * d, edv + 0.2 * d, edv]
    return np.interp(phase, knots, values).astype(np.float32)


def _doppler(rng: np.random.Generator, side: dict[str, Any], h: int, w: int) -> np.ndarray:
    """ICA spectral Doppler strip: ~3 cycles above a baseline, velocity ticks every 50 cm/s."""
    margin = max(3, w // 14)
    cols = w - margin
    psv, edv, waveform = float(side["psv"]), float(side["edv"]), side["waveform"]
    vmax = next((s for s in _SCALES_CM_S if s >= 1.15 * max(psv, 40.0)), _SCALES_CM_S[-1])
    if waveform == "absent":
        vmax = int(rng.choice([100, 150]))
    baseline = int(round(BASELINE_FRACTION * (h - 1)))
    px_per_cm_s = (baseline - 1) / vmax
    v = ((baseline - np.arange(h, dtype=np.float32)) / px_per_cm_s)[:, None]  # velocity per row

    cycles = rng.uniform(2.7, 3.4)
    t = np.arange(cols, dtype=np.float32) / cols * cycles + rng.uniform(0.0, 1.0)
    beat = np.floor(t).astype(np.int32)
    beat_gain = 1.0 + 0.03 * rng.standard_normal(beat.max() + 1).astype(np.float32)
    phase = t - beat
    env = _envelope(phase, psv, edv, waveform, rng) * beat_gain[beat]
    systole = np.exp(-(((phase - 0.15) / 0.12) ** 2))
    soft = 0.025 * vmax

    if waveform == "absent":
        spectrum = 0.35 * (np.abs(v) < 0.05 * vmax) * systole  # wall thump only, no flow
    else:
        broadening = {"normal": 0.25 + 0.2 * side["lumen_reduction"], "stenotic": 1.0,
                      "high": 1.0, "low": 0.6, "string": 0.5}[waveform]
        rough = env * (1.0 + (0.06 if waveform != "normal" else 0.02)
                       * rng.standard_normal(cols).astype(np.float32))
        lower = rough * (1.0 - broadening)
        spectrum = _smoothstep((v - lower) / soft + 0.5) * _smoothstep((rough - v) / soft + 0.5)
        level = {"string": 0.45, "low": 0.6}.get(waveform, 0.85)
        if side["grade"] in ("50-69%", ">=70%", "near-occlusion") and waveform != "string":
            # post-stenotic turbulence: bidirectional, irregular signal around peak systole
            depth = 0.25 if side["grade"] == "50-69%" else 0.45
            spectrum = spectrum + 0.5 * systole * (v < 0) * (v > -depth * rough)
        spectrum = level * spectrum * (np.abs(v) > 0.02 * vmax)  # wall filter gap
    noise_floor = 0.1 if side["poor_window"] else 0.05
    strip = np.zeros((h, w), np.float32)
    gain = 0.8 if side["poor_window"] else 1.0
    strip[:, :cols] = (gain * spectrum * rng.standard_exponential((h, cols), dtype=np.float32)
                       + noise_floor * rng.standard_exponential((h, cols), dtype=np.float32))
    strip = np.clip(strip, 0.0, 1.0) ** 0.8

    strip[baseline, :] = 0.55
    strip[:, cols] = 0.3
    for speed in range(-TICK_STEP_CM_S * 10, vmax + 1, TICK_STEP_CM_S):
        row = int(round(baseline - speed * px_per_cm_s))
        if 0 <= row < h:
            length = margin - 1 if speed % (2 * TICK_STEP_CM_S) == 0 else max(1, margin // 2)
            strip[row, cols + 1:cols + 1 + length] = 0.85
    return strip


# ----------------------------------------------------------------------------- case assembly


def layout(image_size: int) -> tuple[int, int]:
    """Rows of the screen: (B-mode panel height, Doppler baseline row)."""
    bh = int(round(BMODE_FRACTION * image_size))
    strip_h = image_size - bh - 1
    return bh, bh + 1 + int(round(BASELINE_FRACTION * (strip_h - 1)))


def render_view(rng: np.random.Generator, side: dict[str, Any], image_size: int) -> np.ndarray:
    """One duplex screen (uint8, image_size x image_size) for one side's findings."""
    if not 32 <= image_size <= 512:
        raise ValueError(f"image_size must be in [32, 512], got {image_size}")
    bh, _ = layout(image_size)
    screen = np.zeros((image_size, image_size), np.float32)
    screen[:bh] = _bmode(rng, side, bh, image_size)
    screen[bh] = 0.35
    screen[bh + 1:] = _doppler(rng, side, image_size - bh - 1, image_size)
    return (np.clip(screen, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def generate_case(rng: np.random.Generator, image_size: int) -> Case:
    """Sample findings, write the report, render both duplex views."""
    sides = sample_findings(rng)
    labels = labels_from_findings(sides)
    report = carotid_report.write_report(sides, rng)
    images = tuple(render_view(rng, sides[name], image_size) for name in SIDES)
    return Case(
        images=images,
        views=VIEWS,
        report=report.text,
        labels=dict(labels),
        details=sides,
        critical=schema.get_schema("carotid").is_critical(labels),
        template=report.template,
        mentions=report.mentions,
    )
