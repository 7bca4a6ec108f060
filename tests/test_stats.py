"""stats.py: the paired difference and its Student-t interval, against numbers worked out by hand."""
import math

import pytest

from stats import mean_std, paired_difference, rank_agreement

T_975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263}  # t-table, 95% two-sided, by n - 1


def test_interval_is_mean_plus_minus_t_times_sd_over_root_n():
    spec, reference = {0: 70.0, 1: 72.5, 2: 71.0}, {0: 68.0, 1: 69.0, 2: 70.5}  # differences 2.0, 3.5, 0.5
    paired = paired_difference(spec, reference)
    half = T_975[2] * 1.5 / math.sqrt(3)  # mean 2.0, sample sd sqrt((0 + 1.5² + 1.5²) / 2) = 1.5
    assert paired.pairs == 3 and paired.mean == pytest.approx(2.0)
    assert (paired.low, paired.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert not paired.excludes_zero and str(paired) == "+2.00 [-1.73, +5.73]"


def test_a_consistent_difference_excludes_zero_and_is_marked():
    paired = paired_difference({0: 72.0, 1: 71.5, 2: 73.0}, {0: 70.0, 1: 69.0, 2: 70.0})  # 2.0, 2.5, 3.0
    half = T_975[2] * 0.5 / math.sqrt(3)
    assert (paired.low, paired.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert paired.excludes_zero and str(paired).endswith(" *")
    worse = paired_difference({0: 60.0, 1: 61.0}, {0: 70.0, 1: 70.5})  # -10.0, -9.5: below 0 counts too
    assert worse.high == pytest.approx(-9.75 + T_975[1] * math.sqrt(0.125) / math.sqrt(2)) and worse.excludes_zero


def test_only_shared_seeds_pair_up():
    paired = paired_difference({0: 50.0, 1: 55.0, 2: 53.0, 3: None, 4: 52.0, 5: 51.0},
                               {0: 49.0, 1: 51.0, 2: 53.0, 3: 50.0, 4: 50.0})
    differences = [1.0, 4.0, 0.0, 2.0]  # seed 3 has no score, seed 5 no reference
    mean = sum(differences) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    assert paired.pairs == 4 and paired.high - paired.mean == pytest.approx(T_975[3] * sd / 2)
    one = paired_difference({0: 50.0, 1: 51.0}, {1: 50.0})
    assert (one.pairs, one.mean, one.low, one.excludes_zero, str(one)) == (1, 1.0, None, False, "+1.00 (1 pair)")
    assert paired_difference({0: 50.0}, {1: 50.0}) is None


def test_mean_std_prints_the_sample_std():
    assert mean_std([70.0, 72.0, None]) == f"71.00 ± {math.sqrt(2):.2f}" and mean_std([70.0]) == "70.00"
    assert mean_std([None]) == ""


def test_rank_agreement_is_spearmans_formula_on_untied_scores():
    study = {"original": 80.0, "ours": 83.0, "ours-solarize": 82.0, "ours-clahe": 81.0, "ours-brightness": 84.0}
    proxy = {"original": 41.0, "ours": 45.0, "ours-solarize": 47.0, "ours-clahe": 40.0, "ours-brightness": 46.0}
    # ranks study 1 4 3 2 5, proxy 2 3 5 1 4: d = -1 1 -2 1 1, sum d² = 8; rho = 1 - 6·8 / (5·(25 - 1)) = 0.6
    assert rank_agreement(proxy, study) == pytest.approx(0.6)
    assert rank_agreement(study, study) == pytest.approx(1.0)
    assert rank_agreement({k: -v for k, v in study.items()}, study) == pytest.approx(-1.0)


def test_rank_agreement_pairs_shared_settings_and_ties_share_their_mean_rank():
    study = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    # proxy ties b and c: ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4; Pearson of the ranks, as Spearman with ties
    ranks, mean = [1, 2.5, 2.5, 4], 2.5
    expected = sum((r - mean) * (q - mean) for r, q in zip(ranks, [1, 2, 3, 4])) / math.sqrt(
        sum((r - mean) ** 2 for r in ranks) * sum((q - mean) ** 2 for q in [1, 2, 3, 4]))
    assert rank_agreement({"a": 0.1, "b": 0.5, "c": 0.5, "d": 0.9, "e": 0.0}, study) == pytest.approx(expected)
    assert rank_agreement({"a": 1.0, "b": 2.0, "x": 3.0}, study) is None  # 2 shared settings say nothing
    assert rank_agreement({"a": 5.0, "b": 5.0, "c": 5.0}, study) is None  # a proxy that cannot tell them apart
