"""The statistics a study reports: mean ± sample std over seeds, the paired difference of two settings, and how
well a cheap proxy ranks settings as the full study does.

Runs that share a seed share their initialisation, subset and data order, so two augmentation specs are compared
seed by seed: d_s = score(spec, seed s) - score(reference, seed s), and the 95% confidence interval of the mean
difference is mean(d) ± t(0.975, n - 1) · sd(d) / √n (Student t over the n seed pairs). An interval that excludes 0
says the difference is larger than the seed-to-seed noise of this many pairs; it needs at least 2 pairs.
"""
import math
import statistics
from dataclasses import dataclass

from scipy.stats import spearmanr
from scipy.stats import t as student_t


def mean_std(values):
    """'mean ± std' of the values that are not None (2 decimals), the value alone for one, '' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


@dataclass(frozen=True)
class Paired:
    mean: float  # mean over the seed pairs of (setting - reference)
    low: float | None  # the 95% interval; None with one pair
    high: float | None
    pairs: int

    @property
    def excludes_zero(self):
        return self.low is not None and (self.low > 0 or self.high < 0)

    def __str__(self):
        if self.low is None:
            return f"{self.mean:+.2f} (1 pair)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]{' *' if self.excludes_zero else ''}"


def by_seed(records, metric="knn_top1_final"):
    """{seed: metric} of the runs that have both (a seed's later run wins)."""
    return {r.get("seed"): r.get(metric) for r in records
            if r.get("seed") is not None and isinstance(r.get(metric), (int, float)) and not math.isnan(r.get(metric))}


def paired_difference(scores, reference):
    """The paired difference of `scores` against `reference`, both {seed: score}, over the seeds both have (scores of
    None left out); None when they share no seed."""
    seeds = [s for s in scores if s in reference and scores[s] is not None and reference[s] is not None]
    if not seeds:
        return None
    differences = [scores[s] - reference[s] for s in seeds]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Paired(mean, None, None, 1)
    half = student_t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return Paired(mean, mean - half, mean + half, len(differences))


def rank_agreement(proxy, study):
    """Spearman's rank correlation of a proxy's scores with the study's, both {setting: score}, over the settings both
    have (ties share their mean rank): 1 when the proxy orders the settings as the study does, -1 when it reverses
    them. None with fewer than 3 shared settings, where any order agrees or disagrees by chance, and where either
    side scores them all the same (no order to agree with)."""
    shared = [k for k in proxy if k in study and proxy[k] is not None and study[k] is not None]
    if len(shared) < 3 or len({proxy[k] for k in shared}) == 1 or len({study[k] for k in shared}) == 1:
        return None
    return float(spearmanr([proxy[k] for k in shared], [study[k] for k in shared]).statistic)
