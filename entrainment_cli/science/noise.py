"""Seeded noise variants of a multiple-choice question (the robustness study, spec 4.2).

A variant garbles the question text (letters swapped for look-alikes, words given typos) and
inserts near-duplicates of wrong options. Fixes to the upstream generator (spec 7.2 item 13):

- every random choice comes from a ``numpy.random.Generator`` derived from (seed, question
  key, level), so a run is reproducible and one question's noise never depends on the others;
- light and heavy really differ: in the question-noise rates and in the options added;
- whitespace is kept exactly (upstream rejoined words with single spaces, so noisy variants
  also lost their line breaks: a formatting confound);
- near-duplicates are made from wrong options only, each is guaranteed to differ from every
  option already there, and the gold answer's index follows it when options are inserted;
- numbers are never corrupted, so the gold answer stays the answer;
- letters go past J (A..Z), and the options stay a list: nothing is parsed back from text.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseLevel:
    name: str
    char_rate: float  # probability that a letter of the question becomes a look-alike
    word_rate: float  # probability that a word of the question (> 2 chars, no digit) gets a typo
    added_options: int  # near-duplicates of wrong options inserted among the options


LEVELS: dict[str, NoiseLevel] = {
    level.name: level
    for level in [
        NoiseLevel("normal", 0.0, 0.0, 0),
        NoiseLevel("light", 0.10, 0.10, 5),  # upstream's question noise and option count
        NoiseLevel("heavy", 0.20, 0.20, 10),  # upstream reused light's question noise here
    ]
}

LETTERS = string.ascii_uppercase

# Every letter has at least one look-alike (Greek, Cyrillic, digits, symbols).
LOOKALIKES = {
    "a": "αа@4",
    "b": "Ьƅ6",
    "c": "сϲ(",
    "d": "ԁɗ",
    "e": "еε3",
    "f": "ƒ",
    "g": "ɡ9",
    "h": "һ",
    "i": "іι1!",
    "j": "ј",
    "k": "κ",
    "l": "ӏ1|",
    "m": "м",
    "n": "η",
    "o": "оο0",
    "p": "рρ",
    "q": "ԛ",
    "r": "г",
    "s": "ѕ5$",
    "t": "τ7+",
    "u": "υ",
    "v": "ν",
    "w": "ω",
    "x": "хχ",
    "y": "уγ",
    "z": "2",
}
LOOKALIKES_UPPER = {
    "A": "ΑА4",
    "B": "ΒВ8",
    "C": "СϹ",
    "E": "ΕЕ3",
    "H": "ΗН",
    "I": "ΙІ1",
    "J": "Ј",
    "K": "ΚК",
    "M": "ΜМ",
    "N": "Ν",
    "O": "ΟО0",
    "P": "ΡР",
    "S": "Ѕ5",
    "T": "ΤТ7",
    "X": "ΧХ",
    "Y": "ΥҮ",
    "Z": "Ζ2",
}
TYPO_INSERTS = ("666", "888", "999", "123", "777")
HEDGES = (
    "maybe",
    "approximately",
    "possibly",
    "roughly",
    "perhaps",
    "about",
    "nearly",
    "likely",
    "arguably",
)
SYNONYMS = {
    "the": "a",
    "a": "the",
    "is": "was",
    "was": "is",
    "are": "were",
    "were": "are",
    "and": "as well as",
    "or": "and/or",
    "increase": "rise",
    "decrease": "drop",
    "large": "big",
    "small": "little",
    "high": "elevated",
    "low": "reduced",
    "more": "greater",
    "less": "fewer",
    "all": "every",
    "only": "solely",
    "not": "never",
    "because": "since",
    "can": "may",
    "will": "shall",
    "which": "that",
    "between": "among",
}
PUNCTUATION = (",", ";", "...")


@dataclass(frozen=True)
class Variant:
    """One noisy version of a question, with counts that make its noise rates measurable."""

    question: str
    options: tuple[str, ...]
    answer_index: int
    added: tuple[int, ...]  # indices (in ``options``) of the inserted near-duplicates
    letters: int  # letters of the question that could have been swapped
    letters_swapped: int
    words: int  # words that could have got a typo
    words_changed: int

    @property
    def answer(self) -> str:
        return LETTERS[self.answer_index]


def option_letters(n: int) -> list[str]:
    """A, B, ... for n options (past J when noise adds options); at most 26."""
    if n > len(LETTERS):
        raise ValueError(f"{n} options need more than the {len(LETTERS)} letters A-Z")
    return list(LETTERS[:n])


def rng_for(seed: int, key: str, level: str) -> np.random.Generator:
    """A generator of its own for one (question, level): stable across runs and platforms
    (a SHA-256 of the key, not Python's salted ``hash``) and blind to the other questions."""
    digest = hashlib.sha256(f"{key}\0{level}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _swap_lookalikes(text: str, rate: float, rng: np.random.Generator) -> tuple[str, int, int]:
    """Each ASCII letter becomes a look-alike with probability ``rate``; case kept where one
    exists. Returns (text, letters, swapped)."""
    chars = list(text)
    positions = [i for i, c in enumerate(chars) if c in string.ascii_letters]
    hits = rng.random(len(positions)) < rate
    for i in (p for p, hit in zip(positions, hits, strict=True) if hit):
        c = chars[i]
        pool = LOOKALIKES_UPPER.get(c) or LOOKALIKES[c.lower()]
        chars[i] = pool[rng.integers(len(pool))]
    return "".join(chars), len(positions), int(hits.sum())


def _typo(word: str, rng: np.random.Generator) -> str:
    """One edit that always changes the word: swap two different adjacent characters, drop an
    inner character, or replace a character by a digit run."""
    swaps = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    kinds = ["replace"] + (["delete"] + (["swap"] if swaps else []) if len(word) > 3 else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "swap":
        i = swaps[rng.integers(len(swaps))]
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "delete":
        i = int(rng.integers(1, len(word) - 1))
        return word[:i] + word[i + 1 :]
    i = int(rng.integers(len(word)))
    return word[:i] + TYPO_INSERTS[rng.integers(len(TYPO_INSERTS))] + word[i + 1 :]


def _typo_words(text: str, rate: float, rng: np.random.Generator) -> tuple[str, int, int]:
    """Each word longer than 2 characters and without a digit gets a typo with probability
    ``rate``; the whitespace between words is kept as it was. Returns (text, words, changed)."""
    parts = re.split(r"(\s+)", text)  # words at even indices, whitespace at odd ones
    eligible = [
        i for i in range(0, len(parts), 2) if len(parts[i]) > 2 and not re.search(r"\d", parts[i])
    ]
    hits = rng.random(len(eligible)) < rate
    for i in (p for p, hit in zip(eligible, hits, strict=True) if hit):
        parts[i] = _typo(parts[i], rng)
    return "".join(parts), len(eligible), int(hits.sum())


def noisy_question(
    text: str, level: NoiseLevel, rng: np.random.Generator
) -> tuple[str, int, int, int, int]:
    """(text, letters, swapped, words, changed): typos first (so which words count as numbers
    is decided on the original text), then look-alikes."""
    text, words, changed = _typo_words(text, level.word_rate, rng)
    text, letters, swapped = _swap_lookalikes(text, level.char_rate, rng)
    return text, letters, swapped, words, changed


def _modify_once(text: str, rng: np.random.Generator) -> str:
    """One of: insert a hedge word, a synonym swap, punctuation after a word, a repeated word
    (chosen among those that apply, so the text always changes)."""
    parts = re.split(r"(\s+)", text)
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if not words:
        return HEDGES[rng.integers(len(HEDGES))]
    known = [i for i in words if parts[i].lower() in SYNONYMS]
    kinds = ["hedge", "repeat"] + (["synonym"] if known else []) + (["punct"] * (len(words) > 1))
    kind = kinds[rng.integers(len(kinds))]
    if kind == "hedge":
        i = words[rng.integers(len(words))]
        parts[i] = f"{HEDGES[rng.integers(len(HEDGES))]} {parts[i]}"
    elif kind == "repeat":
        i = words[rng.integers(len(words))]
        parts[i] = f"{parts[i]} {parts[i]}"
    elif kind == "synonym":
        i = known[rng.integers(len(known))]
        new = SYNONYMS[parts[i].lower()]
        parts[i] = new.capitalize() if parts[i][0].isupper() else new
    else:
        i = words[rng.integers(len(words) - 1)]
        parts[i] += PUNCTUATION[rng.integers(len(PUNCTUATION))]
    return "".join(parts)


def near_duplicate(text: str, taken: set[str], rng: np.random.Generator) -> str:
    """A modified copy of ``text`` that equals no string in ``taken``. Modifications stack until
    it is new (a hedge, repeat or punctuation always lengthens it, so this ends)."""
    out = _modify_once(text, rng)
    while out in taken:
        out = _modify_once(out, rng)
    return out


def make_variant(
    question: str,
    options: Sequence[str],
    answer_index: int,
    level: NoiseLevel,
    rng: np.random.Generator,
) -> Variant:
    """The question under ``level``: noisy text, and ``level.added_options`` near-duplicates of
    wrong options inserted at random places (the original options keep their order)."""
    options = [str(o) for o in options]
    if not 0 <= answer_index < len(options):
        raise ValueError(f"answer index {answer_index} is outside {len(options)} options")
    text, letters, swapped, words, changed = noisy_question(question, level, rng)
    sources = [i for i, o in enumerate(options) if i != answer_index and o.strip()]
    k = level.added_options if sources else 0
    option_letters(len(options) + k)  # raises past Z
    copies: list[str] = []
    taken = set(options)
    order = rng.permutation(sources).tolist()
    for j in range(k):
        if j and j % len(order) == 0:
            order = rng.permutation(sources).tolist()
        copy = near_duplicate(options[order[j % len(order)]], taken, rng)
        copies.append(copy)
        taken.add(copy)
    added = sorted(rng.choice(len(options) + k, size=k, replace=False).tolist()) if k else []
    merged, originals, extra = [], iter(range(len(options))), iter(copies)
    gold = -1
    for pos in range(len(options) + k):
        if pos in added:
            merged.append(next(extra))
        else:
            i = next(originals)
            gold = pos if i == answer_index else gold
            merged.append(options[i])
    return Variant(text, tuple(merged), gold, tuple(added), letters, swapped, words, changed)


def format_question(question: str, options: Sequence[str]) -> str:
    """The upstream layout: the question, a blank line, one ``(A) text`` line per option,
    a blank line, then ``Answer:``."""
    letters = option_letters(len(options))
    lines = [f"({letter}) {text}" for letter, text in zip(letters, options, strict=True)]
    return f"{question}\n\n" + "\n".join(lines) + "\n\nAnswer:"
