"""VQAv2 accuracy, its answer normalisation, exact match and ANLS on hand-computed examples."""

from __future__ import annotations

import pytest

from taid_vlm.evaluation.vqa import (
    CONTRACTIONS,
    anls,
    exact_match,
    levenshtein,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
    vqa_scores,
)


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0), (10, 100.0)])
def test_k_of_10_annotators(k, expected):
    # Leave-one-out over the 10 answers, k of them equal to the prediction. Leaving out a matching
    # answer leaves k-1 matches, leaving out another leaves k; each subset scores min(1, m/3):
    #   k=1: (1*min(1,0/3) + 9*min(1,1/3)) / 10 = 3/10      -> 30
    #   k=2: (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3)/10 = 0.6  -> 60
    #   k=3: (3*(2/3) + 7*1) / 10 = 9/10                     -> 90
    #   k=4: (4*1 + 6*1) / 10 = 1                            -> 100
    answers = ["cat"] * k + [f"other{i}" for i in range(10 - k)]
    assert vqa_accuracy("cat", answers) == expected  # exact, not approx


def test_fewer_than_ten_answers_is_min_one_matches_over_three():
    assert vqa_accuracy("cat", ["cat"]) == pytest.approx(100 / 3)
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "cow", "ox"]) == pytest.approx(200 / 3)
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == 100.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


def test_leave_one_out_removes_one_copy_not_all_equal_answers():
    # 3 identical matching answers: leaving one out must leave 2 matches (2/3), not 0.
    answers = ["2"] * 3 + ["x"] * 7
    assert vqa_accuracy("two", answers) == 90.0


def test_number_words_articles_and_period():
    assert normalize_answer("Two dogs.") == normalize_answer("2 dogs") == "2 dogs"
    assert normalize_answer("The red one") == "red 1"
    assert normalize_answer("none") == "0"
    assert normalize_answer("An apple\tand\na banana") == "apple and banana"
    assert vqa_accuracy("Two dogs.", ["2 dogs"] * 9 + ["3 dogs"]) == 100.0


def test_contractions():
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("Couldnt've") == "couldn't've"
    assert normalize_answer("couldn'tve") == "couldn't've"
    # Real words are not in the table: "well" must not become "we'll".
    assert "well" not in CONTRACTIONS and "its" not in CONTRACTIONS
    assert vqa_accuracy("dont know", ["don't know"] * 4 + ["no"] * 6) == 100.0


def test_punctuation_rules():
    # Punctuation touching a space is deleted; inside a word it becomes a space.
    assert process_punctuation("yes, it is") == "yes it is"
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("yes/no") == "yes no"
    # A digit-comma-digit group anywhere makes every punctuation mark disappear.
    assert process_punctuation("10,000") == "10000"
    # A period is kept before a digit, deleted otherwise.
    assert process_punctuation("1.5") == "1.5"
    assert process_punctuation("3.5.") == "3.5"
    assert process_punctuation("e.g.") == "eg"
    assert normalize_answer("Yes!") == "yes"
    assert normalize_answer("(a) left-side") == "left side"


def test_official_quirks_skip_normalisation_when_answers_agree():
    # The official script normalises only when the ground truths disagree.
    assert vqa_accuracy("Yes.", ["yes"] * 10, official_quirks=True) == 0.0
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["no"], official_quirks=True) == 100.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 100.0


def test_exact_match():
    assert exact_match("Two dogs.", ["2 dogs"]) == 100.0
    assert exact_match("cat", ["dog", "Cat"]) == 100.0
    assert exact_match("cats", ["cat"]) == 0.0


def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls_hand_values():
    assert anls("helo", ["hello"]) == pytest.approx(80.0)  # 1 - 1/5
    assert anls("abc", ["abd"]) == pytest.approx(100 * 2 / 3)  # 1 - 1/3
    assert anls("ab", ["ac"]) == 0.0  # nl = 0.5 is not < tau
    assert anls("ab", ["xyz"]) == 0.0
    assert anls(" Hello ", ["xyz", "hello"]) == 100.0  # best answer counts, case and spaces ignored
    assert anls("", [""]) == 100.0


def test_vqa_scores_means():
    means, per = vqa_scores(["2", "cat"], [["two"] * 10, ["dog"] * 10])
    # ANLS compares the raw (lower-cased) strings: "2" vs "two" is not a near miss.
    assert means == {"vqa_accuracy": 50.0, "exact_match": 50.0, "anls": 0.0}
    assert per[0]["vqa_accuracy"] == 100.0 and per[1]["anls"] == 0.0
    with pytest.raises(ValueError):
        vqa_scores(["a"], [])
