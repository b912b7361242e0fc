"""The seeded noise generator of `qa robustness`: seeding, rates, layout, gold answer, letters."""

import re

import numpy as np
import pandas as pd
import pytest

from entrainment_cli.qa.robustness import make_variants
from entrainment_cli.science import noise

QUESTION = (
    "A train leaves the station at 9:15 and travels 120 km at a constant speed.\n"
    "Consider the statements below.\n(I) The speed is independent of time.\n\n"
    "Which statement about its average velocity is correct?"
)
OPTIONS = [f"Option number {i} about the velocity of the train" for i in range(10)]
LIGHT, HEAVY = noise.LEVELS["light"], noise.LEVELS["heavy"]


def _variant(level=HEAVY, seed=0, key="q1", question=QUESTION, options=OPTIONS, gold=3):
    return noise.make_variant(question, options, gold, level, noise.rng_for(seed, key, level.name))


def test_same_seed_same_variant_other_seed_other_variant():
    assert _variant(seed=7) == _variant(seed=7)
    assert _variant(seed=7).question != _variant(seed=8).question
    assert _variant(seed=7).options != _variant(seed=8).options
    assert _variant(key="q1").question != _variant(key="q2").question
    # light and heavy of one question are drawn independently, not one from the other
    assert _variant(LIGHT).question != _variant(HEAVY).question


def test_a_questions_noise_does_not_depend_on_the_others():
    def frame(ids, texts):
        return pd.DataFrame(
            {
                "id": ids,
                "question": texts,
                "options": [OPTIONS] * len(ids),
                "answer_index": [3] * len(ids),
                "category": ["physics"] * len(ids),
                "area": ["Physics"] * len(ids),
            }
        )

    levels = list(noise.LEVELS.values())
    alone = make_variants(frame(["b"], [QUESTION]), levels, seed=5)
    crowd = make_variants(
        frame(["z", "a", "b", "c"], ["Other text here.", "More words to use.", QUESTION, "x y"]),
        levels,
        seed=5,
    )
    mine = crowd[crowd.question_id == "b"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, mine)


def test_measured_rates_match_the_levels_and_light_is_lighter():
    text = " ".join(["quantum mechanics describes particles and waves"] * 4)
    measured = {}
    for level in (LIGHT, HEAVY):
        v = [_variant(level, key=f"q{i}", question=text) for i in range(300)]
        letters = sum(x.letters for x in v)
        words = sum(x.words for x in v)
        char = sum(x.letters_swapped for x in v) / letters
        word = sum(x.words_changed for x in v) / words
        # within 5 binomial standard errors of the set rate
        assert abs(char - level.char_rate) < 5 * np.sqrt(level.char_rate / letters)
        assert abs(word - level.word_rate) < 5 * np.sqrt(level.word_rate / words)
        assert all(len(x.added) == level.added_options for x in v)
        assert all(len(x.options) == len(OPTIONS) + level.added_options for x in v)
        measured[level.name] = (char, word, level.added_options)
    assert all(a < b for a, b in zip(measured["light"], measured["heavy"], strict=True))
    normal = _variant(noise.LEVELS["normal"])
    assert (normal.question, normal.options, normal.answer_index) == (QUESTION, tuple(OPTIONS), 3)


def test_rates_measured_independently_by_comparing_texts():
    """Look-alikes alone: count changed letters; typos alone: count changed words."""
    text = " ".join(["Graphene conducts heat better than copper does"] * 5)
    chars_only = noise.NoiseLevel("c", 0.15, 0.0, 0)
    words_only = noise.NoiseLevel("w", 0.0, 0.25, 0)
    changed = total = 0
    for i in range(200):
        v = _variant(chars_only, key=str(i), question=text)
        assert len(v.question) == len(text)  # one look-alike per letter, nothing else moves
        changed += sum(a != b for a, b in zip(text, v.question, strict=True))
        total += sum(c.isalpha() for c in text)
    assert changed / total == pytest.approx(0.15, abs=5 * np.sqrt(0.15 / total))
    changed = total = 0
    for i in range(200):
        v = _variant(words_only, key=str(i), question=text)
        before, after = text.split(), v.question.split()
        changed += sum(a != b for a, b in zip(before, after, strict=True))
        total += sum(len(w) > 2 for w in before)
    assert changed / total == pytest.approx(0.25, abs=5 * np.sqrt(0.25 / total))


def test_noise_keeps_the_layout_and_the_numbers():
    for seed in range(20):
        v = _variant(HEAVY, seed=seed)
        assert re.findall(r"\s+", v.question) == re.findall(r"\s+", QUESTION)
        for before, after in zip(QUESTION.split(), v.question.split(), strict=True):
            if re.search(r"\d", before):  # numbers are never given typos; digits stay put
                assert len(after) == len(before)
                assert all(a == b for a, b in zip(before, after, strict=True) if a.isdigit())
        prompt = noise.format_question(v.question, v.options)
        lines = prompt.split("\n")
        n_q = QUESTION.count("\n") + 1
        assert lines[:n_q] == v.question.split("\n") and lines[n_q] == ""
        option_lines = lines[n_q + 1 : n_q + 1 + len(v.options)]
        assert [line[:4] for line in option_lines] == [f"({c}) " for c in "ABCDEFGHIJKLMNOPQRST"]
        assert lines[-2:] == ["", "Answer:"]


def test_gold_answer_follows_its_option_and_copies_are_new_wrong_options():
    for seed in range(30):
        for gold in (0, 4, 9):
            v = _variant(HEAVY, seed=seed, gold=gold)
            assert v.options[v.answer_index] == OPTIONS[gold]
            assert v.answer == noise.LETTERS[v.answer_index]
            originals = [o for i, o in enumerate(v.options) if i not in v.added]
            assert originals == OPTIONS  # the originals keep their order
            copies = [v.options[i] for i in v.added]
            assert len(set(v.options)) == len(v.options)  # no exact duplicate anywhere
            assert all(c not in OPTIONS for c in copies)
    # copies are made from wrong options only: with one wrong option, every copy is of it
    v = _variant(HEAVY, options=["alpha beta", "gamma delta"], gold=0)
    assert all("gamma" in v.options[i] or "delta" in v.options[i] for i in v.added)
    assert len(v.options) == 12 and v.options[v.answer_index] == "alpha beta"


def test_near_duplicate_is_never_an_exact_copy():
    rng = np.random.default_rng(0)
    for text in ["x", "None", "the cell", "It is the same for all observers", ""]:
        taken = {text}
        for _ in range(30):
            new = noise.near_duplicate(text, taken, rng)
            assert new not in taken
            taken.add(new)


def test_letters_beyond_j():
    v = _variant(HEAVY)
    assert len(v.options) == 20
    assert noise.option_letters(20)[-1] == "T"
    assert "\n(T) " in noise.format_question(v.question, v.options)
    golds = {_variant(HEAVY, seed=s, gold=9).answer for s in range(40)}
    assert any(letter > "J" for letter in golds)  # the gold can sit past J, and is scored there
    with pytest.raises(ValueError, match="27 options need more than the 26 letters"):
        noise.option_letters(27)
    with pytest.raises(ValueError, match="answer index 10 is outside 10 options"):
        _variant(gold=10)
