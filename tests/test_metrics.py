"""The micro-AP rule on hand-made cases whose answers are derived by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import evaluate_predictions
from isc_qk.errors import UserError
from isc_qk.evaluation.metrics import (
    average_precision,
    match_ranks,
    precision_recall,
    recall_at_precision,
    worst_case_order,
)


def test_perfect_ranking_is_one():
    # two positives on top, P = 2: precisions 1, 1 at recall 1/2, 1 -> AP = 1
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 0], 2) == pytest.approx(1.0)


def test_ties_put_false_positives_first():
    # all scores equal: worst case order FP, FP, TP -> TP at position 3, precision 1/3
    # AP = (1/1) * 1/3 = 1/3 (P = 1)
    assert average_precision([0.5, 0.5, 0.5], [0, 1, 0], 1) == pytest.approx(1 / 3)
    order = worst_case_order([0.5, 0.5, 0.5], [0, 1, 0])
    assert order.tolist()[-1] == 1


def test_tie_between_groups_only_reorders_within_equal_scores():
    # scores 0.9(tp) 0.8(tp) 0.8(fp) 0.1(tp), P = 3
    # order: tp(0.9), fp(0.8), tp(0.8), tp(0.1) -> precisions 1, 1/2, 2/3, 3/4
    # AP = 1/3 * (1 + 2/3 + 3/4) = 29/36
    assert average_precision([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 1], 3) == pytest.approx(29 / 36)
    p, r, t = precision_recall([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 1], 3)
    assert p.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4])
    assert r.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1])
    assert t.tolist() == [0.9, 0.8, 0.8, 0.1]


def test_missed_positives_count_in_denominator():
    # one retrieved positive at rank 1 but P = 4 (three never retrieved): AP = 1/4
    assert average_precision([1.0, 0.5], [1, 0], 4) == pytest.approx(0.25)


def test_no_predictions_gives_zero():
    assert average_precision([], [], 3) == 0.0
    assert recall_at_precision([], [], 3) == (None, None)


def test_recall_at_p90_reached_and_threshold():
    # 9 tp then 1 fp then 1 tp (scores 11..1), P = 10
    # precisions: 1..1 (9 tp), 9/10 = 0.9 at position 10, 10/11 = 0.909 at position 11
    # -> positions with precision >= 0.9: all; largest recall 10/10 at position 11, score 1
    scores = np.arange(11, 0, -1, dtype=float)
    labels = [1] * 9 + [0, 1]
    assert recall_at_precision(scores, labels, 10, 0.9) == (pytest.approx(1.0), 1.0)


def test_recall_at_p90_picks_first_position_of_best_recall():
    # tp(5) fp(4) tp(3)... P = 2: precisions 1, 1/2, 2/3 -> only position 1 has p >= 0.9
    # recall there 1/2, threshold = its score 5
    assert recall_at_precision([5, 4, 3], [1, 0, 1], 2, 0.9) == (0.5, 5.0)


def test_recall_at_p90_never_reached():
    # first prediction is a false positive and later ones never climb back to 0.9:
    # precisions 0, 1/2, 2/3 -> never >= 0.9
    assert recall_at_precision([3, 2, 1], [0, 1, 1], 2, 0.9) == (None, None)


def test_exact_precision_point_nine_counts_as_reached():
    # 9 tp then 1 fp (P = 9): the last position has precision exactly 9/10
    # best recall 1 is reached at position 9 (precision 1), threshold = score of position 9
    scores = np.arange(10, 0, -1, dtype=float)
    r, t = recall_at_precision(scores, [1] * 9 + [0], 9, 0.9)
    assert (r, t) == (1.0, 2.0)


def test_ranks_ties_count_against():
    # query 0: scores 0.9 (fp), 0.7 (true), 0.7 (fp) -> 3 predictions >= 0.7 -> rank 2
    # query 1: true match 0.5 is its best -> rank 0; a third GT pair is not retrieved -> inf
    q = np.array([0, 0, 0, 1, 1])
    s = np.array([0.9, 0.7, 0.7, 0.5, 0.2])
    ranks = match_ranks(q, s, np.array([1, 3, -1]))
    assert ranks[0] == 2 and ranks[1] == 0 and math.isinf(ranks[2])


def test_evaluate_predictions_hand_case_with_missing_query_and_two_references():
    # GT: Q1 -> R1, Q1 -> R2 (one query with two references), Q2 -> R3 (Q2 never searched)
    # predictions (score): Q1-R1 0.9 tp, Q3-R7 0.8 fp, Q1-R2 0.8 tp, Q1-R5 0.3 fp
    # worst case: tp(0.9), fp(0.8), tp(0.8), fp(0.3); P = 3
    # precisions 1, 1/2, 2/3, 2/4 ; AP = 1/3 * (1 + 2/3) = 5/9
    # recall@P90: only position 1 -> 1/3 at threshold 0.9
    # ranks: Q1-R1 -> 0; Q1-R2: Q1 has scores 0.9, 0.8, 0.3 -> 2 >= 0.8 -> rank 1; Q2-R3 -> inf
    # recall@rank1 = 1/3, recall@rank10 = 2/3
    m = evaluate_predictions(
        ["Q1", "Q3", "Q1", "Q1"],
        ["R1", "R7", "R2", "R5"],
        [0.9, 0.8, 0.8, 0.3],
        [("Q1", "R1"), ("Q1", "R2"), ("Q2", "R3")],
    )
    assert m.micro_ap == pytest.approx(5 / 9)
    assert m.recall_at_p90 == pytest.approx(1 / 3) and m.threshold_at_p90 == 0.9
    assert m.recall_at_rank1 == pytest.approx(1 / 3)
    assert m.recall_at_rank10 == pytest.approx(2 / 3)
    assert (m.n_predictions, m.n_positives, m.n_true_positives) == (4, 3, 2)


def test_rank_of_second_reference_behind_first_true_match():
    # Q1 has two true references and nothing else: scores 0.9 and 0.8 -> ranks 0 and 1
    m = evaluate_predictions(["Q1", "Q1"], ["R1", "R2"], [0.9, 0.8], [("Q1", "R1"), ("Q1", "R2")])
    assert m.micro_ap == pytest.approx(1.0)
    assert m.recall_at_rank1 == pytest.approx(0.5) and m.recall_at_rank10 == pytest.approx(1.0)


def test_no_positive_in_ground_truth_is_an_error():
    with pytest.raises(UserError, match="no matched pair"):
        average_precision([1.0], [0], 0)


def test_constant_scores_cannot_beat_honest_order():
    # the same labels with all scores equal score no better than any real ordering
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    honest = average_precision(rng.random(200) + labels, labels, int(labels.sum()))
    constant = average_precision(np.zeros(200), labels, int(labels.sum()))
    worst = average_precision(-labels.astype(float), labels, int(labels.sum()))
    assert constant == pytest.approx(worst) and constant < honest


def test_ap_equals_mean_precision_at_each_positive_on_random_data():
    # independent formulation: AP = (1/P) * sum over retrieved positives of tp_i / i
    rng = np.random.default_rng(1)
    s = np.round(rng.random(500), 2)  # many ties
    y = rng.random(500) < 0.4
    P = int(y.sum()) + 17
    ranked = sorted(zip(s, y), key=lambda t: (-t[0], t[1]))  # fp (False) first among ties
    tp, total = 0, 0.0
    for i, (_, yy) in enumerate(ranked, start=1):
        if yy:
            tp += 1
            total += tp / i
    assert average_precision(s, y, P) == pytest.approx(total / P, abs=1e-12)
