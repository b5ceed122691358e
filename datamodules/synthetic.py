"""Synthetic faces with a known bias, generated on first use in CelebA's on-disk layout (the offline default).

Every image shows a cartoon face. Two sensitive attributes are drawn on it — ``Male`` (short hair vs hair
down the sides) and ``Young`` (dark vs grey hair, brighter skin) — and the target ``Smiling`` is a mouth
curved upward around an open dark mouth versus a flat closed mouth. Per intersectional group (ordered by the code
``2 * Male + Young``: not_Male/not_Young, not_Male/Young, Male/not_Young, Male/Young) the generator controls

* ``group_proportions`` — share of the images (the first group is a small minority by default),
* ``positive_rates`` — P(Smiling | group), i.e. the label–group correlation,
* ``signal_strength`` — how visible the smile cue is (the minority's cue is faint by default),

so the bias a model should pick up is known in advance. Counts are exact (largest-remainder rounding),
not sampled, and everything is derived from ``seed``. The parameters and realised counts are written to
``synthetic_params.json`` next to the data, which :class:`~datamodules.celeba.CelebADataModule` reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from datamodules import cache as image_cache
from datamodules._registry import register_datamodule
from datamodules.celeba import ATTR_FILE, IMAGE_DIR, PARTITION_FILE, CelebADataModule
from datamodules.errors import DataFormatError
from datamodules.splits import largest_remainder, stratified_assign

PARAMS_FILE = "synthetic_params.json"
GENERATOR_VERSION = 1
GROUPS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (Male, Young) in code order 2 * Male + Young


def synthetic_parameters(
    n_samples: int = 4000,
    image_size: int = 64,
    group_proportions: Sequence[float] = (0.06, 0.40, 0.20, 0.34),
    positive_rates: Sequence[float] = (0.30, 0.65, 0.35, 0.50),
    signal_strength: Sequence[float] = (0.25, 1.0, 1.0, 1.0),
    noise_std: float = 0.10,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, Any]:
    """Validated generation parameters (the dict that is hashed into the data folder name and saved)."""
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_samples": int(n_samples),
        "image_size": int(image_size),
        "groups": [{"Male": m, "Young": y} for m, y in GROUPS],
        "group_proportions": [float(p) for p in group_proportions],
        "positive_rates": [float(p) for p in positive_rates],
        "signal_strength": [float(s) for s in signal_strength],
        "noise_std": float(noise_std),
        "split_fractions": [float(f) for f in split_fractions],
        "seed": int(seed),
    }
    for key in ("group_proportions", "positive_rates", "signal_strength"):
        if len(params[key]) != len(GROUPS):
            raise DataFormatError(f"{key} needs {len(GROUPS)} values (groups {params['groups']}), got {params[key]}")
    if not np.isclose(sum(params["group_proportions"]), 1.0) or min(params["group_proportions"]) < 0:
        raise DataFormatError(f"group_proportions must be non-negative and sum to 1, got {params['group_proportions']}")
    if not all(0.0 <= p <= 1.0 for p in params["positive_rates"]):
        raise DataFormatError(f"positive_rates must lie in [0, 1], got {params['positive_rates']}")
    if params["n_samples"] < 20 or params["image_size"] < 16:
        raise DataFormatError("n_samples must be >= 20 and image_size >= 16")
    return params


def draw_labels(params: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exact per-group counts and positives, shuffled: arrays ``Male``, ``Young``, ``Smiling``, ``group``."""
    n = params["n_samples"]
    counts = largest_remainder(n, np.asarray(params["group_proportions"]))
    group = np.repeat(np.arange(len(GROUPS)), counts)
    smiling = np.zeros(n, dtype=np.int64)
    start = 0
    for g, c in enumerate(counts):
        pos = int(round(c * params["positive_rates"][g]))
        smiling[start + rng.choice(c, size=pos, replace=False)] = 1
        start += c
    order = rng.permutation(n)
    group, smiling = group[order], smiling[order]
    male = np.array([GROUPS[g][0] for g in group])
    young = np.array([GROUPS[g][1] for g in group])
    return {"group": group, "Male": male, "Young": young, "Smiling": smiling}


def render_face(size: int, male: int, young: int, smiling: int, signal: float, noise: float,
                rng: np.random.Generator) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 cartoon face; the smile cue's visibility scales with ``signal``."""
    v, u = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = np.empty((size, size, 3))
    img[:] = rng.uniform(0.15, 0.85, size=3)  # background colour: nuisance
    cx, cy = rng.uniform(-0.08, 0.08, size=2)
    x, y = u - cx, v - cy
    face = (x / 0.55) ** 2 + (y / 0.72) ** 2 <= 1
    hair_colour = np.array([0.25, 0.15, 0.08]) if young else np.array([0.72, 0.72, 0.72])
    hair = ((x / 0.62) ** 2 + ((y + 0.05) / 0.80) ** 2 <= 1) & ~face
    if male:
        hair &= y < -0.35  # short hair: on top only
    else:
        hair &= y < 0.55   # long hair: down the sides
    img[hair] = hair_colour
    skin = (np.array([0.93, 0.78, 0.66]) if young else np.array([0.78, 0.62, 0.52])) * rng.uniform(0.85, 1.05)
    img[face] = skin
    for ex in (-0.22, 0.22):  # eyes
        img[((x - ex) ** 2 + (y + 0.15) ** 2) <= 0.07 ** 2] = 0.1
    # mouth: lower lip y = my + k (half^2 - x^2) (image y points down, so k > 0 is a smile) and, when smiling,
    # an open dark mouth between the upper lip (y = my) and the lower lip; both cues scale with ``signal``
    my, half = 0.36, 0.30
    k = 2.2 * signal if smiling else 0.0
    inside = np.abs(x) <= half
    curve = my + k * (half ** 2 - x ** 2)
    if smiling:
        mouth = inside & (y > my) & (y < curve)
        img[mouth] = img[mouth] * (1 - signal) + signal * np.array([0.25, 0.04, 0.06])
    lip_colour = np.array([0.55, 0.12, 0.15])
    img[inside & (np.abs(y - curve) <= 0.045)] = lip_colour
    if smiling:
        upper = inside & (np.abs(y - my) <= 0.03) & (np.abs(y - curve) > 0.045)
        img[upper] = img[upper] * (1 - signal) + signal * lip_colour
    img += rng.normal(0.0, noise, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(folder: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Write the synthetic set into ``folder`` in CelebA's layout (atomically: built aside, then renamed)."""
    folder = Path(folder)
    if (folder / PARAMS_FILE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGE_DIR).mkdir(parents=True)
    rng = np.random.default_rng(params["seed"])
    labels = draw_labels(params, rng)
    n = params["n_samples"]
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i in tqdm(range(n), desc="Generating synthetic faces", unit="img"):
        g = labels["group"][i]
        pixels = render_face(params["image_size"], labels["Male"][i], labels["Young"][i], labels["Smiling"][i],
                             params["signal_strength"][g], params["noise_std"], rng)
        Image.fromarray(pixels).save(tmp / IMAGE_DIR / files[i], quality=92)
    strata = [f"{g}|{s}" for g, s in zip(labels["group"], labels["Smiling"])]
    split = stratified_assign(strata, params["split_fractions"], ["0", "1", "2"], params["seed"])
    names = ["Smiling", "Male", "Young"]
    with open(tmp / ATTR_FILE, "w") as fh:
        fh.write(f"{n}\n{' '.join(names)}\n")
        for i, f in enumerate(files):
            fh.write(f + " " + " ".join(f"{2 * labels[a][i] - 1:2d}" for a in names) + "\n")
    with open(tmp / PARTITION_FILE, "w") as fh:
        fh.writelines(f"{f} {s}\n" for f, s in zip(files, split))
    realised = {
        "group_counts": np.bincount(labels["group"], minlength=len(GROUPS)).tolist(),
        "positives": np.bincount(labels["group"], weights=labels["Smiling"], minlength=len(GROUPS))
        .astype(int)
        .tolist(),
        "label_group_phi": {a: float(np.corrcoef(labels[a], labels["Smiling"])[0, 1]) for a in ("Male", "Young")},
    }
    (tmp / PARAMS_FILE).write_text(json.dumps({**params, "realised": realised}, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@register_datamodule("synthetic")
class SyntheticDataModule(CelebADataModule):
    """The embedded offline default: synthetic faces with known bias, read back by the CelebA reader.

    Data are generated on first use into ``<root or cache_dir/synthetic>/celeba_synth_<hash of parameters>/``
    (a few seconds) and reused afterwards. See the module docstring for the meaning of the parameters.
    """

    dataset_name = "synthetic"

    def __init__(
        self,
        root: str | None = None,
        target: str = "Smiling",
        sensitive: Sequence[str] = ("Male", "Young"),
        image_size: int = 64,
        seed: int = 0,
        n_samples: int = 4000,
        group_proportions: Sequence[float] = (0.06, 0.40, 0.20, 0.34),
        positive_rates: Sequence[float] = (0.30, 0.65, 0.35, 0.50),
        signal_strength: Sequence[float] = (0.25, 1.0, 1.0, 1.0),
        noise_std: float = 0.10,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        **kwargs,  # FaceDataModule loader options: batch_size, eval_batch_size, num_workers, seed, cache_dir, …
    ):
        self.generation = synthetic_parameters(
            n_samples, image_size, group_proportions, positive_rates, signal_strength, noise_std,
            split_fractions, seed,
        )
        super().__init__(
            root, target, sensitive, image_size, seed=seed, download=False, **kwargs,
        )

    @property
    def data_folder(self) -> Path:
        """Where this parameter set's images live."""
        digest = hashlib.sha256(json.dumps(self.generation, sort_keys=True).encode()).hexdigest()[:12]
        if self.root:
            base = Path(self.root).expanduser()
        else:
            base = image_cache.default_cache_dir(self.cache_dir) / "synthetic"
        return base / f"celeba_synth_{digest}"

    def _resolve_root(self) -> Path:
        return generate(self.data_folder, self.generation)

    def _extra_description(self) -> dict[str, Any]:
        return {"split": "CelebA-layout partition written by the generator (stratified by group x label)",
                "generation": json.loads((self.data_folder / PARAMS_FILE).read_text())}
