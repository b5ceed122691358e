"""Paired statistics for compressed-vs-baseline comparisons on the same test samples.

Everything works on *joint counts* ``joint[g, t, a, b]`` = samples of group ``g`` with true class ``t`` that
prediction vector A (e.g. the baseline) labels ``a`` and vector B (e.g. the compressed model) labels ``b``;
both marginals are the per-group confusion counts of :mod:`fairq.metrics`, so every metric is the metrics
package's own function of counts.

- Bootstrap: :func:`fairq.metrics.resample_group_counts` (stratified within groups; one multinomial draw per
  group over its joint cells, so both vectors are scored on the same resampled samples).
- Paired permutation test: under H0 "A and B are exchangeable per sample", each sample's two predictions are
  swapped with probability 1/2. Swapping moves a sample from cell ``(t, a, b)`` to ``(t, b, a)``, so one
  permutation is ``k ~ Binomial(joint, 1/2)`` moved to the transposed cell: ``O(G·C³)`` per permutation instead
  of ``O(n)``, exactly the same distribution as swapping sample by sample. Written here because no library
  offers a paired permutation test over arbitrary group-fairness statistics (scipy.stats.permutation_test
  would re-evaluate per sample and per resample, ~1000x slower here).
- Several seeds (:class:`SharedSamples`): when seeds are evaluated on the same test samples (decided from the
  sample ids), their test-set noise is shared, so each bootstrap draw resamples the samples *once* for all seeds
  (and the seeds themselves with replacement), and each permutation swaps a sample's A/B predictions in every
  seed at once. Resampling each seed independently would average that shared noise away: the same counts passed
  as 8 "seeds" would give an interval √8 times too narrow. Seeds on disjoint test sets are resampled
  independently.
- McNemar: statsmodels (exact binomial when there are few discordant pairs).
- Benjamini–Hochberg: statsmodels ``multipletests(method="fdr_bh")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fairq.metrics import resample_group_counts

__all__ = ["SharedSamples", "joint_counts", "mcnemar_test", "cohens_h", "benjamini_hochberg", "permute_joint", "bootstrap_draws",
           "permutation_draws", "permutation_p", "percentile_ci", "paired_comparison", "EXACT_MCNEMAR_BELOW"]

#: McNemar uses the exact binomial test when the discordant count is below this, else chi² with continuity
#: correction (the usual rule of thumb: the chi² approximation needs b + c ≳ 25).
EXACT_MCNEMAR_BELOW = 25
_CHUNK_CELLS = 4_000_000


def joint_counts(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, group_ids: np.ndarray,
                 n_groups: int, num_classes: int) -> np.ndarray:
    """``[G, C, C, C]`` counts of ``(group, y_true, pred_a, pred_b)`` from integer codes (one bincount)."""
    c = int(num_classes)
    flat = ((np.asarray(group_ids) * c + np.asarray(y_true)) * c + np.asarray(pred_a)) * c + np.asarray(pred_b)
    return np.bincount(flat.astype(np.int64), minlength=n_groups * c ** 3).reshape(n_groups, c, c, c)


class SharedSamples:
    """Paired predictions of S seeds on overlapping test samples, kept per sample (as *patterns*).

    A sample's pattern is its stratum (group) and, per seed, its joint cell ``(group, y_true, a, b)`` (``-1`` when
    that seed did not see the sample). Samples with one pattern are interchangeable, so resampling or swapping
    works on pattern counts: ``O(patterns)`` per draw, not ``O(n)``.

    Parameters
    ----------
    cells : int array [S, n]
        Flat index into ``shape`` = ``(G, C, C, C)`` of each sample's ``(group, y_true, pred_a, pred_b)`` per
        seed, or -1 where the seed lacks the sample.
    strata : int array [n]
        Resampling stratum of each sample (its group).
    shape : tuple
        ``(G, C, C, C)``.
    """

    def __init__(self, cells: np.ndarray, strata: np.ndarray, shape: tuple[int, ...]):
        cells = np.asarray(cells, dtype=np.int64)
        self.shape, self.n_seeds = tuple(int(s) for s in shape), cells.shape[0]
        g, c = self.shape[0], self.shape[1]
        keys = np.vstack([np.asarray(strata, dtype=np.int64)[None], cells])
        patterns, self.count = np.unique(keys.T, axis=0, return_counts=True)
        self.strata = patterns[:, 0]
        cell = patterns[:, 1:].T                                                  # [S, P]
        grp, rest = np.divmod(np.where(cell < 0, 0, cell), c ** 3)
        t, ab = np.divmod(rest, c * c)
        a, b = np.divmod(ab, c)
        swapped = ((grp * c + t) * c + b) * c + a
        n_cells = g * c ** 3
        self._onehot = np.zeros((self.n_seeds, len(self.count), n_cells))
        self._onehot_swapped = np.zeros_like(self._onehot)
        for s in range(self.n_seeds):
            present = cell[s] >= 0
            idx = np.nonzero(present)[0]
            self._onehot[s, idx, cell[s, present]] = 1.0
            self._onehot_swapped[s, idx, swapped[s, present]] = 1.0

    def joints(self, counts: np.ndarray | None = None, swapped: np.ndarray | None = None) -> np.ndarray:
        """``[..., S, G, C, C, C]`` joint counts for pattern ``counts`` ``[..., P]`` (default: the observed ones),
        of which ``swapped`` ``[..., P]`` have A and B exchanged."""
        counts = self.count if counts is None else counts
        kept = counts if swapped is None else counts - swapped
        out = np.einsum("...p,spk->...sk", kept.astype(float), self._onehot)
        if swapped is not None:
            out += np.einsum("...p,spk->...sk", swapped.astype(float), self._onehot_swapped)
        return np.rint(out).astype(np.int64).reshape(out.shape[:-1] + self.shape)

    def resample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``[n, P]`` pattern counts of stratified bootstrap resamples (each stratum keeps its size)."""
        out = np.zeros((int(n), len(self.count)), dtype=np.int64)
        for s in np.unique(self.strata):
            sel = np.nonzero(self.strata == s)[0]
            c = self.count[sel]
            out[:, sel] = rng.multinomial(int(c.sum()), c / c.sum(), size=int(n))
        return out


def mcnemar_test(only_a_correct: int, only_b_correct: int) -> tuple[float, int, str]:
    """McNemar test of paired correctness from the two discordant counts.

    Parameters
    ----------
    only_a_correct, only_b_correct : int
        Samples that only prediction A gets right, and that only B gets right (the concordant cells do not
        enter the test).

    Returns
    -------
    p_value, n_discordant, method
        ``method`` is ``"mcnemar_exact"`` (binomial test, below ``EXACT_MCNEMAR_BELOW`` discordant pairs) or
        ``"mcnemar_chi2"`` (chi² with continuity correction); p is 1.0 when there are no discordant pairs.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    b, c = int(only_a_correct), int(only_b_correct)
    disc = b + c
    if disc == 0:
        return 1.0, 0, "mcnemar_exact"
    exact = disc < EXACT_MCNEMAR_BELOW
    res = mcnemar(np.array([[0, b], [c, 0]]), exact=exact, correction=True)
    return float(res.pvalue), disc, "mcnemar_exact" if exact else "mcnemar_chi2"


def cohens_h(p_new, p_ref):
    """Cohen's h of two proportions: ``2·asin(√p_new) − 2·asin(√p_ref)`` (|h| 0.2 small, 0.5 medium)."""
    p_new = np.clip(np.asarray(p_new, dtype=float), 0.0, 1.0)
    p_ref = np.clip(np.asarray(p_ref, dtype=float), 0.0, 1.0)
    return 2.0 * np.arcsin(np.sqrt(p_new)) - 2.0 * np.arcsin(np.sqrt(p_ref))


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """BH-adjusted p-values (statsmodels ``fdr_bh``); NaN entries stay NaN and are not counted as tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


def permute_joint(joint: np.ndarray, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``[P, G, C, C, C]`` joint counts after swapping each sample's A/B predictions with probability 1/2."""
    joint = np.asarray(joint, dtype=np.int64)
    k = rng.binomial(np.broadcast_to(joint, (int(n_permutations),) + joint.shape), 0.5)
    return joint - k + np.swapaxes(k, -1, -2)


def _chunks(total: int, per_item: int):
    step = max(1, _CHUNK_CELLS // max(1, per_item))
    for start in range(0, total, step):
        yield min(step, total - start)


def _two_sided_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Permutation p ``(1 + #{|T*| ≥ |T|}) / (1 + P)`` per column; NaN draws are dropped, NaN T gives NaN."""
    tol = 1e-12
    valid = ~np.isnan(null)
    extreme = (np.abs(np.nan_to_num(null)) >= np.abs(observed) - tol) & valid
    p = (1.0 + extreme.sum(axis=0)) / (1.0 + valid.sum(axis=0))
    return np.where(np.isnan(observed) | (valid.sum(axis=0) == 0), np.nan, p)


def bootstrap_draws(joint: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, K]`` statistic over stratified bootstrap resamples of one joint count array (memory-chunked)."""
    joint = np.asarray(joint, dtype=np.int64)
    parts = [_stat(statistic, resample_group_counts(joint, b, rng)) for b in _chunks(int(n_bootstrap), joint.size)]
    return np.concatenate(parts, axis=0).reshape(int(n_bootstrap), -1)


def permutation_draws(joint: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``[P, K]`` statistic under the paired-swap null (see module docstring), memory-chunked."""
    joint = np.asarray(joint, dtype=np.int64)
    parts = [_stat(statistic, permute_joint(joint, b, rng)) for b in _chunks(int(n_permutations), joint.size)]
    return np.concatenate(parts, axis=0).reshape(int(n_permutations), -1)


def _stat(statistic, joint: np.ndarray) -> np.ndarray:
    """Apply ``statistic`` to the two marginals of ``joint[..., G, C, C, C]``; result ``[..., K]``."""
    out = np.asarray(statistic(joint.sum(axis=-1), joint.sum(axis=-2)), dtype=float)
    return out.reshape(joint.shape[:-4] + (-1,))


def percentile_ci(draws: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile interval per column of ``draws [B, K]``, NaN draws ignored; plus the count of valid draws."""
    alpha = 1.0 - confidence
    valid = (~np.isnan(draws)).sum(axis=0)
    lo = np.full(draws.shape[1], np.nan)
    hi = np.full(draws.shape[1], np.nan)
    ok = valid > 0
    if ok.any():
        q = np.nanpercentile(draws[:, ok], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi, valid


def permutation_p(joints: Sequence[np.ndarray], statistic, observed: np.ndarray, n_permutations: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Two-sided paired-permutation p of ``observed`` (mean over seeds), swaps drawn within each seed."""
    null = np.mean([permutation_draws(j, statistic, n_permutations, rng) for j in joints], axis=0)
    return _two_sided_p(np.asarray(observed, dtype=float), null)


def _shared_comparison(samples: SharedSamples, statistic, *, n_bootstrap, n_permutations, rng, confidence,
                       permutation) -> dict[str, np.ndarray]:
    """:func:`paired_comparison` for seeds on shared samples: one resample of the samples for every seed, the
    seeds resampled with replacement, one swap per sample in every seed (see the module docstring)."""
    s = samples.n_seeds
    per_seed = _stat(statistic, samples.joints())                                  # [S, K]
    observed = per_seed.mean(axis=0)
    boots = []
    for b in _chunks(int(n_bootstrap), s * samples._onehot.shape[1] * samples._onehot.shape[2]):
        stats = _stat(statistic, samples.joints(samples.resample(b, rng)))           # [b, S, K]
        weights = rng.multinomial(s, np.full(s, 1.0 / s), size=b) / s                # seeds resampled
        drawn_nan = (np.isnan(stats) & (weights[..., None] > 0)).any(axis=1)
        mean = np.einsum("bs,bsk->bk", weights, np.nan_to_num(stats))
        boots.append(np.where(drawn_nan, np.nan, mean))
    boot = np.concatenate(boots, axis=0)
    lo, hi, valid = percentile_ci(boot, confidence)
    p = np.full(observed.shape, np.nan)
    if permutation:
        nulls = []
        for b in _chunks(int(n_permutations), s * samples._onehot.shape[1] * samples._onehot.shape[2]):
            k = rng.binomial(np.broadcast_to(samples.count, (b, len(samples.count))), 0.5)
            nulls.append(_stat(statistic, samples.joints(np.broadcast_to(samples.count, k.shape), k)).mean(axis=1))
        p = _two_sided_p(observed, np.concatenate(nulls, axis=0))
    return {"estimate": observed, "ci_low": lo, "ci_high": hi, "p_value": p, "n_valid": valid}


def paired_comparison(joints, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                      n_bootstrap: int = 1000, n_permutations: int = 1000, seed=0, confidence: float = 0.95,
                      permutation: bool = True) -> dict[str, np.ndarray]:
    """Estimate, stratified-bootstrap CI and paired-permutation p of a statistic of two paired prediction vectors.

    Parameters
    ----------
    joints : :class:`SharedSamples`, or a list of ``[G, C, C, C]`` arrays
        Seeds evaluated on shared test samples (:class:`SharedSamples`, built from the sample ids by
        :func:`fairq.analysis.deltas.seed_samples`): resampled and permuted jointly. A list of joint arrays is one
        per seed on its *own* samples (disjoint test sets, or a single seed): draws are made within each seed and
        averaged. Either way the estimate is the mean of the per-seed statistics.
    statistic : callable ``(counts_a, counts_b) -> array [..., K]``
        Maps the two marginal confusion counts ``[..., G, C, C]`` (leading batch axes) to K statistics. For the
        permutation p-value it must be antisymmetric (``stat(b, a) == -stat(a, b)``, e.g. ``metric(b) −
        metric(a)``), so that its null distribution is symmetric about 0.
    n_bootstrap, n_permutations : int
    seed : int or SeedSequence entropy
    confidence : float
    permutation : bool
        Skip the permutation test (p is NaN) when False.

    Returns
    -------
    dict with arrays of shape [K]: ``estimate, ci_low, ci_high, p_value, n_valid``.
    """
    rng = np.random.default_rng(seed)
    if isinstance(joints, SharedSamples):
        return _shared_comparison(joints, statistic, n_bootstrap=n_bootstrap, n_permutations=n_permutations,
                                  rng=rng, confidence=confidence, permutation=permutation)
    joints = [np.asarray(j, dtype=np.int64) for j in joints]
    if not joints:
        raise ValueError("paired_comparison needs at least one joint count array")
    observed = np.mean([_stat(statistic, j) for j in joints], axis=0)
    boot = np.mean([bootstrap_draws(j, statistic, n_bootstrap, rng) for j in joints], axis=0)
    lo, hi, valid = percentile_ci(boot, confidence)
    if permutation:
        p = permutation_p(joints, statistic, observed, n_permutations, rng)
    else:
        p = np.full(observed.shape, np.nan)
    return {"estimate": observed, "ci_low": lo, "ci_high": hi, "p_value": p, "n_valid": valid}
