"""Synthetic frontal chest radiographs whose findings are known by construction.

``generate_case(rng, image_size)`` samples findings with roughly clinical frequencies and
co-occurrences (``sample_findings``), writes the report (``cxr_report``) and renders the image
(``render``). Everything is drawn from the one ``rng`` in a fixed order — findings, report, then
pixels — so the same ``(seed, index)`` gives identical bytes, and the report does not depend on
the image size.

Laterality follows the radiographic convention: the image is viewed as if facing the patient, so
the **patient's right is on the image's LEFT** (small x) and the heart, aortic knob and gastric
bubble lie on the image's right. ``_SIGN`` maps a side to the direction of increasing x.

Rendering works on a "density" map in normalised coordinates (x, y in [0, 1], y downwards):
body soft tissue, dark lungs with vascular markings, bright mediastinum/heart/diaphragm, ribs,
clavicles and spine, then the findings and devices, a little blur, exposure and noise. All drawing
is vectorised numpy; lines and devices are splatted from densely sampled curves.
"""

from __future__ import annotations

from math import comb

import numpy as np

from radflow_jax.data.synthetic.case import Case
from radflow_jax.data.synthetic.cxr_report import finding_labels, write_report
from radflow_jax.schema import get_schema

_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> image x direction
_CM = 0.025  # image units per centimetre (thorax ~30 cm across ~0.76 of the image)


# ---------------------------------------------------------------- findings sampling


def _choice(rng: np.random.Generator, options: tuple, p: tuple[float, ...]) -> str:
    return options[int(rng.choice(len(options), p=np.asarray(p) / np.sum(p)))]


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    return _choice(rng, ("right", "left", "bilateral"), (0.5, 0.5 - bilateral, bilateral))


def _zone(rng: np.random.Generator) -> str:
    return _choice(rng, ("upper", "mid", "lower"), (0.25, 0.25, 0.5))


def _abnormal_findings(rng: np.random.Generator) -> dict:
    """Findings of an abnormal study (each drawn with its conditional rate and co-occurrences)."""
    f: dict = {}
    if rng.random() < 0.1:
        tension = bool(rng.random() < 0.25)
        size = _choice(rng, ("moderate", "large"), (0.4, 0.6)) if tension else _choice(
            rng, ("small", "moderate", "large"), (0.55, 0.3, 0.15))
        subtle = bool(size == "small" and rng.random() < 0.4)
        f["pneumothorax"] = {"side": _side(rng), "size": size, "tension": tension, "subtle": subtle}
    if rng.random() < 0.15:
        subtle = bool(rng.random() < 0.2)
        severity = _choice(rng, ("mild", "moderate", "severe"), (0.5, 0.35, 0.15))
        f["cardiomegaly"] = {"severity": "borderline" if subtle else severity, "subtle": subtle}
    if rng.random() < 0.06:
        f["enlarged_cardiomediastinum"] = {"subtle": bool(rng.random() < 0.25)}
    if rng.random() < 0.045 + 0.25 * ("cardiomegaly" in f):
        severity = _choice(rng, ("mild", "moderate", "severe"), (0.5, 0.35, 0.15))
        f["edema"] = {"severity": severity, "kerley": bool(severity != "mild" and rng.random() < 0.7),
                      "subtle": bool(severity == "mild" and rng.random() < 0.35)}
    if rng.random() < 0.15 + 0.3 * ("edema" in f or "cardiomegaly" in f):
        side = _side(rng, bilateral=0.45 if "edema" in f else 0.2)
        size = _choice(rng, ("small", "moderate", "large"), (0.5, 0.33, 0.17))
        f["pleural_effusion"] = {"side": side, "size": size,
                                 "subtle": bool(size == "small" and rng.random() < 0.3)}
    if rng.random() < 0.09 + 0.3 * ("pleural_effusion" in f):
        side = f["pleural_effusion"]["side"] if "pleural_effusion" in f else _side(rng, bilateral=0.3)
        f["atelectasis"] = {"side": side, "zone": "lower", "subtle": bool(rng.random() < 0.25)}
    if rng.random() < 0.085:
        pneumonia = _choice(rng, ("stated", "hedged", "none"), (0.3, 0.4, 0.3))
        f["consolidation"] = {"side": _side(rng), "zone": _zone(rng), "pneumonia": pneumonia,
                              "subtle": bool(rng.random() < 0.2)}
    if rng.random() < 0.1:
        f["lung_opacity"] = {"side": _side(rng), "zone": _zone(rng), "subtle": bool(rng.random() < 0.25)}
    if rng.random() < 0.06:
        mass = bool(rng.random() < 0.3)
        size = float(rng.uniform(3.0, 7.0) if mass else rng.uniform(0.8, 2.9))
        f["lung_lesion"] = {"kind": "mass" if mass else "nodule", "size_cm": round(size, 1),
                            "side": _side(rng), "zone": _zone(rng),
                            "subtle": bool(not mass and size < 1.4 and rng.random() < 0.5)}
    if rng.random() < 0.045:
        f["pleural_other"] = {"kind": _choice(rng, ("thickening", "calcified plaque"), (0.5, 0.5)),
                              "side": _side(rng), "subtle": False}
    if rng.random() < 0.03 + 0.25 * ("pneumothorax" in f):
        side = f["pneumothorax"]["side"] if "pneumothorax" in f else _side(rng)
        f["fracture"] = {"side": side, "rib": int(rng.integers(3, 10)), "subtle": bool(rng.random() < 0.25)}
    return f


def _sample_devices(rng: np.random.Generator, f: dict) -> dict:
    d: dict = {}
    ptx = f.get("pneumothorax")
    if ptx and not ptx["subtle"] and rng.random() < 0.45:
        d["chest_tube"] = {"side": ptx["side"]}
    if rng.random() < 0.45:
        d["ett"] = {"cm_above_carina": float(rng.integers(5, 13)) / 2}
    if rng.random() < 0.5 + 0.2 * bool(ptx):
        d["central_line"] = {"side": _choice(rng, ("right", "left"), (0.7, 0.3)),
                             "route": _choice(rng, ("jugular", "subclavian"), (0.6, 0.4)),
                             "tip": _choice(rng, ("svc", "cavoatrial"), (0.7, 0.3))}
    if not d or rng.random() < 0.15 + 0.3 * ("cardiomegaly" in f):
        d["pacemaker"] = {"side": "left", "leads": int(rng.integers(1, 3))}
    return d


def sample_findings(rng: np.random.Generator) -> dict:
    """Structured, JSON-serialisable findings of one study (absent findings have no key)."""
    f: dict = {}
    if rng.random() < 0.68:
        while not f:
            f = _abnormal_findings(rng)
    sick = any(k in f for k in ("edema", "pneumothorax", "consolidation", "cardiomegaly"))
    if rng.random() < (0.07 if not f else 0.2 + 0.15 * sick):
        f["support_devices"] = _sample_devices(rng, f)
    bedside = any(k in f.get("support_devices", {}) for k in ("ett", "central_line", "chest_tube"))
    f["projection"] = "AP" if rng.random() < (0.9 if bedside else 0.1) else "PA"
    cm = f.get("cardiomegaly")
    ctr = {None: (0.40, 0.48), "borderline": (0.51, 0.53), "mild": (0.54, 0.58), "moderate": (0.58, 0.63),
           "severe": (0.63, 0.70)}[cm["severity"] if cm else None]
    f["cardiothoracic_ratio"] = round(float(rng.uniform(*ctr)), 3)
    return f


# ---------------------------------------------------------------- drawing helpers


def _step(d: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of d > 0 with a linear edge ``width`` wide (anti-aliasing)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-2, 2]: a random coarse grid, bilinearly upsampled."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * cells
    i = np.minimum(c.astype(int), cells - 1)
    t = c - i
    rows = grid[i] * (1 - t)[:, None] + grid[i + 1] * t[:, None]
    return rows[:, i] * (1 - t) + rows[:, i + 1] * t


def _bezier(ctrl: list[tuple[float, float]], n: int) -> np.ndarray:
    """Points along a Bezier curve, dense enough (< 0.5 px apart) to splat without gaps."""
    p = np.asarray(ctrl, dtype=np.float64)
    length = np.sum(np.linalg.norm(np.diff(p, axis=0), axis=1))
    t = np.linspace(0.0, 1.0, max(int(length * n * 2.5), 2))[:, None]
    k = len(p) - 1
    basis = [comb(k, j) * t**j * (1 - t) ** (k - j) for j in range(k + 1)]
    return sum(b * q for b, q in zip(basis, p))


def _splat(n: int, pts: np.ndarray, radius: float) -> np.ndarray:
    """Binary mask of a curve of the given radius (image units), at least one pixel wide."""
    r = max(radius * n, 0.5)
    ri = int(np.ceil(r))
    oy, ox = np.mgrid[-ri:ri + 1, -ri:ri + 1]
    keep = ox**2 + oy**2 <= r * r + 0.25
    ox, oy = ox[keep], oy[keep]
    px = np.rint(pts[:, 0] * n - 0.5).astype(int)[:, None] + ox
    py = np.rint(pts[:, 1] * n - 0.5).astype(int)[:, None] + oy
    ok = (px >= 0) & (px < n) & (py >= 0) & (py < n)
    mask = np.zeros((n, n), np.float32)
    mask[py[ok], px[ok]] = 1.0
    return mask


def _segment_dist(x, y, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


def _blur(a: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur, ``passes`` times (the imaging system's point spread)."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[:-2, 1:-1] + 0.5 * p[1:-1, 1:-1] + 0.25 * p[2:, 1:-1]
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[1:-1, :-2] + 0.5 * p[1:-1, 1:-1] + 0.25 * p[1:-1, 2:]
    return a


# ---------------------------------------------------------------- anatomy


class _Anatomy:
    """Patient geometry in image units, already deformed by the findings (shift, domes, heart)."""

    def __init__(self, f: dict, rng: np.random.Generator, n: int):
        self.n = n
        self.e = 1.5 / n  # anti-aliasing edge width
        angle = rng.uniform(-0.04, 0.04)
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        x0, y0 = np.meshgrid(c - 0.5, c - 0.5)
        self.x = (0.5 + np.cos(angle) * x0 - np.sin(angle) * y0).astype(np.float32)
        self.y = (0.5 + np.sin(angle) * x0 + np.cos(angle) * y0).astype(np.float32)
        self.cx = 0.5 + rng.uniform(-0.03, 0.03)
        self.w = rng.uniform(0.34, 0.40)  # half-width of the thorax
        self.top = rng.uniform(0.1, 0.15)  # lung apices
        base = self.top + rng.uniform(0.56, 0.63)
        self.dome = {-1.0: base - rng.uniform(0.01, 0.03), 1.0: base}  # right dome a little higher
        self.shift = 0.0
        ptx = f.get("pneumothorax")
        if ptx and ptx["tension"]:
            s = _SIGN[ptx["side"]]
            self.shift = -s * rng.uniform(0.04, 0.07)  # mediastinum away from the tension side
            self.dome[s] += rng.uniform(0.05, 0.08)
        atel = f.get("atelectasis")
        if atel and not atel["subtle"]:
            for s in _sides_of(atel["side"]):
                self.dome[s] -= 0.025  # volume loss lifts the hemidiaphragm
        self.ctr = f["cardiothoracic_ratio"]
        self.ecm = 0.0
        if "enlarged_cardiomediastinum" in f:
            self.ecm = 0.015 if f["enlarged_cardiomediastinum"]["subtle"] else rng.uniform(0.03, 0.05)

    def h(self, s: float) -> float:
        return self.dome[s] - self.top

    def cmx(self, y) -> np.ndarray:
        """Mediastinal midline: follows a tension shift below the neck."""
        return self.cx + self.shift * np.clip((y - self.top + 0.05) / 0.2, 0.0, 1.0)

    def med_halfwidth(self, y) -> np.ndarray:
        upper = np.exp(-(((y - self.top - 0.12) / 0.12) ** 2))
        return 0.055 + (0.02 + self.ecm) * upper

    def carina(self) -> float:
        return self.top + 0.27 * self.h(1.0)

    def dome_y(self, s: float, u) -> np.ndarray:
        """Hemidiaphragm height at lateral coordinate u (0 midline, ~0.95 costophrenic angle)."""
        return self.dome[s] + self.h(s) * 0.55 * (u - 0.4) ** 2

    def frame(self, s: float, x=None, y=None) -> tuple[np.ndarray, np.ndarray]:
        x = self.x if x is None else x
        y = self.y if y is None else y
        return s * (x - self.cx) / self.w, (y - self.top) / self.h(s)

    def lateral(self, v) -> np.ndarray:
        """Lateral lung edge: a rounded apex widening down to the costophrenic angle."""
        t = np.clip(v / 0.85, 0.0, 1.0)
        return 0.95 * np.sqrt(1 - (1 - t) ** 2.2)

    def lung(self, s: float, x=None, y=None) -> np.ndarray:
        x = self.x if x is None else x
        y = self.y if y is None else y
        u, v = self.frame(s, x, y)
        medial = s * (x - self.cmx(y)) - self.med_halfwidth(y) * 0.9
        return (_step((self.lateral(v) - u) * self.w, self.e) * _step(medial, self.e)
                * _step(self.dome_y(s, u) - y, self.e) * _step(y - self.top, self.e))

    def heart(self) -> tuple[float, float, float, float]:
        width = self.ctr * 2 * 0.95 * self.w
        return self.cmx(1.0) + 0.2 * width, self.dome[1.0] + 0.03, width / 2, 0.2 + 0.3 * (self.ctr - 0.45)

    def at(self, s: float, u: float, v: float) -> tuple[float, float]:
        """Image point of lateral coordinate u and height fraction v on side s."""
        return self.cx + s * u * self.w, self.top + v * self.h(s)


def _sides_of(side: str) -> tuple[float, ...]:
    return (-1.0, 1.0) if side == "bilateral" else (_SIGN[side],)


def _markings(a: _Anatomy, s: float, rng: np.random.Generator) -> np.ndarray:
    """Lung texture: vessels radiating from the hilum, tapering towards the periphery."""
    hx, hy = a.cmx(a.top) + s * 0.1, a.top + 0.5 * a.h(s)
    r = np.hypot(a.x - hx, a.y - hy)
    theta = np.arctan2(a.y - hy, s * (a.x - hx))
    wobble = _smooth_noise(rng, a.n, 5)
    main = (0.5 + 0.5 * np.cos(23 * theta + 1.8 * wobble)) ** 8 * np.exp(-r / 0.25)
    fine = (0.5 + 0.5 * np.cos(47 * theta + 3.0 * wobble + 9 * r)) ** 12 * np.exp(-r / 0.3)
    vessels = (main + 0.5 * fine) * (1 - np.exp(-r / 0.04)) * np.clip(0.7 + 0.3 * wobble, 0, 1.5)
    return vessels + 0.25 * _smooth_noise(rng, a.n, 20)  # plus interstitial texture


def _ribs(a: _Anatomy, s: float, fracture: dict | None) -> np.ndarray:
    """Posterior (bright) and anterior (faint) ribs of one hemithorax; a fracture is a gap and a step."""
    u, _ = a.frame(s)
    h = a.h(s)
    spacing = (a.dome[s] + 0.05 - a.top) / 10.0
    shape = h * (-0.2 * u + 1.2 * np.clip(u - 0.5, 0, None) ** 2)
    phase = (a.y - a.top + 0.035 - shape) / spacing
    k = np.floor(phase)
    frac = phase - k
    inside = _step((1.02 - u) * a.w, 3 * a.e) * _step(u * a.w - 0.03, 3 * a.e) * (k >= 0) * (k <= 10)
    if fracture is not None and _SIGN[fracture["side"]] == s:
        u_f = 0.72
        rib = k == fracture["rib"] - 1
        step = 0.0 if fracture["subtle"] else 0.12
        frac = np.where(rib & (u > u_f), frac - step, frac)
        inside = inside * (1 - (rib & (np.abs(u - u_f) < 0.9 / (a.n * a.w) + 0.006)))
    posterior = np.exp(-(((frac - 0.5) / 0.16) ** 2)) * inside
    phase_a = (a.y - a.top - 0.02 - h * 0.35 * (1 - u)) / (spacing * 1.1)
    anterior = np.exp(-(((phase_a - np.floor(phase_a) - 0.5) / 0.16) ** 2))
    anterior *= _step(u - 0.2, 0.1) * inside * (phase_a < 7)
    return posterior + 0.35 * anterior


# ---------------------------------------------------------------- findings drawing


def _blob(a: _Anatomy, s: float, zone: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    v = {"upper": 0.25, "mid": 0.5, "lower": 0.75}[zone] + rng.uniform(-0.05, 0.05)
    x, y = a.at(s, rng.uniform(0.45, 0.65), v)
    return np.exp(-((a.x - x) ** 2 + (a.y - y) ** 2) / radius**2)


def _lung_findings(a: _Anatomy, f: dict, lungs: dict, rng: np.random.Generator) -> np.ndarray:
    """Added density from parenchymal findings (inside the lungs)."""
    d = np.zeros_like(a.x)
    if "consolidation" in f:
        c = f["consolidation"]
        for s in _sides_of(c["side"]):
            r = rng.uniform(0.045, 0.06) if c["subtle"] else rng.uniform(0.08, 0.11)
            patch = _blob(a, s, c["zone"], r, rng) ** 0.6 * np.clip(0.7 + 0.45 * _smooth_noise(rng, a.n, 12), 0, 1)
            d += (0.12 if c["subtle"] else 0.36) * patch * lungs[s]
    if "lung_opacity" in f:
        o = f["lung_opacity"]
        for s in _sides_of(o["side"]):
            haze = _blob(a, s, o["zone"], rng.uniform(0.08, 0.12), rng) * (0.8 + 0.1 * _smooth_noise(rng, a.n, 8))
            d += (0.08 if o["subtle"] else 0.16) * haze * lungs[s]
    if "atelectasis" in f:
        t = f["atelectasis"]
        for s in _sides_of(t["side"]):
            (x0, y0), (x1, y1) = a.at(s, 0.3, rng.uniform(0.8, 0.86)), a.at(s, 0.78, rng.uniform(0.8, 0.86))
            dist = _segment_dist(a.x, a.y, (x0, y0), (x1, y1))
            band = np.exp(-((dist / max(0.009, 1.2 / a.n)) ** 2))
            d += (0.12 if t["subtle"] else 0.26) * band * lungs[s]
    if "edema" in f:
        e = f["edema"]
        sigma, amp = {"mild": (0.12, 0.09), "moderate": (0.16, 0.15), "severe": (0.2, 0.23)}[e["severity"]]
        amp = 0.05 if e["subtle"] else amp
        for s in (-1.0, 1.0):
            hx, hy = a.cmx(a.top) + s * 0.1, a.top + 0.5 * a.h(s)
            haze = np.exp(-((a.x - hx) ** 2 + ((a.y - hy) / 1.3) ** 2) / sigma**2)
            d += amp * haze * (0.85 + 0.1 * _smooth_noise(rng, a.n, 10)) * lungs[s]
            if e["kerley"]:
                lines = np.zeros_like(a.x)
                for v in rng.uniform(0.65, 0.92, size=6):
                    u0 = 0.95 * (v / 0.95) ** 0.38
                    p0, p1 = a.at(s, u0 - 0.01, v), a.at(s, u0 - 0.09, v + rng.uniform(-0.01, 0.01))
                    lines = np.maximum(lines, _splat(a.n, _bezier([p0, p1], a.n), 0.5 / a.n))
                d += 0.14 * lines * lungs[s]
    if "lung_lesion" in f:
        m = f["lung_lesion"]
        s = _sides_of(m["side"])[0]
        v = {"upper": 0.28, "mid": 0.5, "lower": 0.72}[m["zone"]]
        x, y = a.at(s, rng.uniform(0.4, 0.65), v + rng.uniform(-0.05, 0.05))
        r0 = max(m["size_cm"] / 2 * _CM, 1.2 / a.n)
        dx, dy = a.x - x, a.y - y
        r = r0 * (1 + (0.12 if m["kind"] == "mass" else 0.03) * np.cos(3 * np.arctan2(dy, dx) + rng.uniform(0, 6)))
        amp = 0.12 if m["subtle"] else 0.3 if m["kind"] == "mass" else 0.22
        d += amp * _step(r - np.hypot(dx, dy), max(a.e, 0.25 * r0)) * lungs[s]
    return d


def _pleural_other(a: _Anatomy, p: dict, lungs: dict, rng: np.random.Generator) -> np.ndarray:
    d = np.zeros_like(a.x)
    for s in _sides_of(p["side"]):
        u, v = a.frame(s)
        to_wall = (a.lateral(v) - u) * a.w
        if p["kind"] == "thickening":
            band = np.exp(-((to_wall / 0.016) ** 2)) * _step(v - 0.3, 0.1) * _step(0.95 - v, 0.05)
            d += 0.3 * band * lungs[s]
            continue
        for v0 in rng.uniform(0.35, 0.85, size=3):
            x0, y0 = a.at(s, a.lateral(v0) - 0.02, v0)
            plaque = np.exp(-(((a.x - x0) / 0.008) ** 2 + ((a.y - y0) / 0.03) ** 2))
            d += 0.45 * np.clip(1.5 * plaque, 0, 1)
    return d


def _pleural_findings(a: _Anatomy, f: dict, lungs: dict, marks: dict) -> np.ndarray:
    """Effusion (dependent fluid with a meniscus) and pneumothorax (lucent rim, pleural line).

    Mutates ``marks`` so no lung markings show through fluid or pleural air.
    """
    d = np.zeros_like(a.x)
    eff = f.get("pleural_effusion")
    if eff:
        for s in _sides_of(eff["side"]):
            h = a.h(s)
            height = {"small": 0.1, "moderate": 0.3, "large": 0.55}[eff["size"]] * h
            height = 0.06 * h if eff["subtle"] else height
            u, _ = a.frame(s)
            cp = a.dome_y(s, 0.95)
            surface = cp - height - (0.05 * h + 0.2 * height) * np.clip((u - 0.3) / 0.65, 0, 1) ** 2
            fluid = _step(a.y - surface, 0.03) * lungs[s]
            d += (0.2 if eff["subtle"] else 0.34) * fluid
            marks[s] = marks[s] * (1 - fluid)
    ptx = f.get("pneumothorax")
    if ptx:
        s = _SIGN[ptx["side"]]
        keep = 0.94 if ptx["subtle"] else {"small": 0.88, "moderate": 0.65, "large": 0.42}[ptx["size"]]
        # Small ones show at the apex; larger ones collapse the lung towards the hilum.
        px, py = a.at(s, 0.3, 0.85) if keep > 0.8 else a.at(s, 0.15, 0.6)
        collapsed = a.lung(s, px + (a.x - px) / keep, py + (a.y - py) / keep)
        air = lungs[s] * (1 - collapsed)
        line = 4 * collapsed * (1 - collapsed)
        d += -0.07 * air + 0.12 * (1 - keep) * collapsed + (0.08 if ptx["subtle"] else 0.16) * line * lungs[s]
        marks[s] = marks[s] * collapsed
    return d


def _draw_devices(a: _Anatomy, dev: dict) -> np.ndarray:
    n, d = a.n, np.zeros_like(a.x)
    carina = a.carina()
    mid = float(a.cmx(carina))
    hx, _, rx, _ = a.heart()
    if "ett" in dev:
        tip = carina - dev["ett"]["cm_above_carina"] * _CM
        pts = _bezier([(float(a.cmx(0.0)), -0.02), (mid, tip)], n)
        d += 0.1 * _splat(n, pts, 0.011) + 0.35 * _splat(n, pts, 0.003)
    if "central_line" in dev:
        line = dev["central_line"]
        s = _SIGN[line["side"]]
        tip = (mid - 0.03, carina + (0.05 if line["tip"] == "svc" else 0.11))
        svc = (mid - 0.035, carina - 0.03)
        if line["route"] == "jugular":
            ctrl = [(a.cx + s * 0.07, -0.02), (a.cx + s * 0.06, a.top - 0.02), svc, tip]
        else:
            ctrl = [(a.cx + s * 0.6 * a.w, a.top + 0.05), (a.cx + s * 0.2 * a.w, a.top + 0.02), svc, tip]
        d += 0.4 * _splat(n, _bezier(ctrl, n), 0.002)
    if "pacemaker" in dev:
        gx, gy = a.cx + 0.62 * a.w, a.top + 0.06
        box = _step(0.035 - np.abs(a.x - gx), a.e) * _step(0.025 - np.abs(a.y - gy), a.e)
        core = _step(0.022 - np.abs(a.x - gx), a.e) * _step(0.014 - np.abs(a.y - gy), a.e)
        d += 0.9 * box - 0.25 * core
        floor = a.dome[1.0]
        ra, rv = (mid - 0.045, floor - 0.1), (hx + 0.3 * rx, floor - 0.03)
        ends = [rv] if dev["pacemaker"]["leads"] == 1 else [ra, rv]
        for end in ends:
            ctrl = [(gx - 0.03, gy), (mid + 0.03, a.top + 0.01), (mid - 0.05, carina + 0.02), end]
            d += 0.45 * _splat(n, _bezier(ctrl, n), 0.002)
    if "chest_tube" in dev:
        s = _SIGN[dev["chest_tube"]["side"]]
        ctrl = [a.at(s, 1.15, 0.85), a.at(s, 0.85, 0.7), a.at(s, 0.55, 0.3), a.at(s, 0.45, 0.12)]
        pts = _bezier(ctrl, n)
        d += 0.3 * _splat(n, pts, 0.009) - 0.18 * _splat(n, pts, 0.004)
    return d


# ---------------------------------------------------------------- composition


def render(f: dict, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """The frontal radiograph of findings ``f`` as a uint8 ``(image_size, image_size)`` array."""
    if not 32 <= image_size <= 512:
        raise ValueError(f"image_size must be in [32, 512], got {image_size}")
    a = _Anatomy(f, rng, image_size)
    x, y = a.x, a.y

    hw = a.w * (1.16 - 0.1 * (y - 0.5) ** 2)
    hw = hw - (hw - 0.085) * _step(a.top - 0.03 - y, 0.09)  # shoulders narrowing to the neck
    dx = np.abs(x - a.cx)
    body = _step(hw - dx, 3 * a.e)
    d = 0.02 + body * (0.28 + 0.12 * np.clip(1 - (dx / hw) ** 2, 0, 1))
    arm_gap = dx - hw
    d += 0.3 * _step(arm_gap - 0.025, 3 * a.e) * _step(0.13 - arm_gap, 4 * a.e) * _step(y - a.top + 0.02, 0.05)

    u = np.abs(x - a.cx) / a.w
    diaphragm = np.where(x < a.cx, a.dome_y(-1.0, u), a.dome_y(1.0, u))
    abdomen = _step(y - diaphragm, a.e)
    cm = a.cmx(y)
    mw = a.med_halfwidth(y)
    mediastinum = _step(mw - np.abs(x - cm), 2 * a.e) * _step(y - a.top + 0.06, 0.04)
    knob = _step(0.028 - np.hypot(x - cm - mw, y - a.top - 0.2), 2 * a.e)
    hx, hy, rx, ry = a.heart()
    heart = _step(1 - ((x - hx) / rx) ** 2 - ((y - hy) / ry) ** 2, 4 * a.e / rx) * (1 - abdomen)
    lungs = {s: a.lung(s) * (1 - heart) for s in (-1.0, 1.0)}
    marks = {s: _markings(a, s, rng) for s in (-1.0, 1.0)}
    d += body * np.maximum(np.maximum(0.26 * abdomen, 0.3 * mediastinum), np.maximum(0.32 * heart, 0.26 * knob))
    gx, gy = a.cx + 0.55 * a.w, a.dome[1.0] + 0.1
    d -= 0.12 * _step(1 - ((x - gx) / 0.06) ** 2 - ((y - gy) / 0.03) ** 2, 0.3)
    d += 0.05 * _step(0.034 - dx, 2 * a.e) * (1 + 0.6 * (np.cos(2 * np.pi * y / 0.042) > 0.2))
    for s in (-1.0, 1.0):
        hilum_x, hilum_y = a.cmx(a.top) + s * 0.085, a.top + 0.48 * a.h(s)
        d += 0.1 * np.exp(-((x - hilum_x) ** 2 + (y - hilum_y) ** 2) / 0.03**2) * lungs[s]

    carina = a.carina()
    trachea = _step(0.013 - np.abs(x - cm), a.e) * _step(carina - y, a.e) * _step(y + 0.1, a.e)
    for s in (-1.0, 1.0):
        bronchus = _segment_dist(x, y, (float(a.cmx(carina)), carina), (float(a.cmx(carina)) + s * 0.05, carina + 0.06))
        trachea = np.maximum(trachea, _step(0.01 - bronchus, a.e))
    d -= 0.12 * trachea

    d += _pleural_findings(a, f, lungs, marks)
    d -= sum(0.28 * lungs[s] for s in lungs)
    d += sum(0.16 * marks[s] * lungs[s] for s in lungs)
    d += 0.08 * (y - a.top) * (lungs[-1.0] + lungs[1.0])
    d += _lung_findings(a, f, lungs, rng)
    if "pleural_other" in f:
        d += _pleural_other(a, f["pleural_other"], lungs, rng)

    in_lung = lungs[-1.0] + lungs[1.0]
    d += 0.075 * sum(_ribs(a, s, f.get("fracture")) for s in (-1.0, 1.0)) * body * (0.25 + 0.75 * in_lung)
    for s in (-1.0, 1.0):
        ctrl = [(a.cmx(a.top) + s * 0.04, a.top + 0.05), (a.cx + s * 0.5 * a.w, a.top + 0.04),
                (a.cx + s * 0.95 * a.w, a.top - 0.02)]
        d += 0.13 * _blur(_splat(a.n, _bezier(ctrl, a.n), 0.012), 1)
    if "support_devices" in f:
        d += _draw_devices(a, f["support_devices"])

    d = _blur(d, max(1, a.n // 160))
    lo, hi = rng.uniform(-0.02, 0.04), rng.uniform(0.9, 1.05)
    img = np.clip((d - lo) / (hi - lo), 0, 1) ** rng.uniform(0.8, 1.25)
    subtle = any(isinstance(v, dict) and v.get("subtle") for v in f.values())
    sigma = rng.uniform(0.01, 0.025) + 0.012 * subtle
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def generate_case(rng: np.random.Generator, image_size: int) -> Case:
    """One synthetic chest X-ray study: findings, then report, then pixels, all from ``rng``."""
    findings = sample_findings(rng)
    report = write_report(findings, rng)
    image = render(findings, rng, image_size)
    labels = finding_labels(findings)
    return Case(
        images=(image,),
        views=(findings["projection"],),
        report=report.text,
        labels=dict(labels),
        details=findings,
        critical=get_schema("cxr").is_critical(labels),
        template=report.template,
        mentions=report.mentions,
    )
