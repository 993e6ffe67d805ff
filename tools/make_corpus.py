"""Writes python/fastbptt/cli/data/corpus.txt, the text the character-model demo trains on.

The text is generated from a small grammar with a fixed seed, so it is ours to ship, has structure a small
LSTM learns in a minute (words, agreement, punctuation), and can be regenerated bit for bit:

    python tools/make_corpus.py
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = {
    "singular": [
        "the network",
        "a small cell",
        "the gradient",
        "the forget gate",
        "an old recurrence",
        "the hidden state",
        "a careful student",
        "the long sequence",
        "the teacher",
        "a tired robot",
    ],
    "plural": [
        "the networks",
        "many cells",
        "the gradients",
        "the gates",
        "two students",
        "the sequences",
        "some robots",
        "the teachers",
    ],
}
VERBS = {
    "singular": [
        "remembers",
        "forgets",
        "carries",
        "learns",
        "multiplies",
        "follows",
        "explodes",
        "vanishes",
        "keeps",
        "reads",
    ],
    "plural": [
        "remember",
        "forget",
        "carry",
        "learn",
        "multiply",
        "follow",
        "explode",
        "vanish",
        "keep",
        "read",
    ],
}
OBJECTS = [
    "the past",
    "every step",
    "a long memory",
    "the last word",
    "its own state",
    "the error signal",
    "a product of jacobians",
    "the next letter",
    "the first symbol",
    "a small number",
    "the whole story",
]
ADVERBIALS = [
    "through time",
    "step by step",
    "without a doubt",
    "in the morning",
    "at every step",
    "slowly",
    "again and again",
    "for a hundred steps",
    "when the weights are large",
    "by design",
]
CONNECTIVES = ["and then", "but", "because", "so", "while"]


def clause(rng: random.Random) -> str:
    number = rng.choice(("singular", "plural"))
    parts = [rng.choice(SUBJECTS[number]), rng.choice(VERBS[number])]
    if rng.random() < 0.8:
        parts.append(rng.choice(OBJECTS))
    if rng.random() < 0.5:
        parts.append(rng.choice(ADVERBIALS))
    return " ".join(parts)


def sentence(rng: random.Random) -> str:
    text = clause(rng)
    if rng.random() < 0.4:
        text += ", " + rng.choice(CONNECTIVES) + " " + clause(rng)
    ending = rng.choices([".", "!", "?"], weights=[8, 1, 1])[0]
    return text[0].upper() + text[1:] + ending


def corpus(n_chars: int, seed: int = 2019) -> str:
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(2, 5)))
        lines.append(paragraph)
        size += len(paragraph) + 1
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "python" / "fastbptt" / "cli" / "data" / "corpus.txt"
    target.write_text(corpus(40_000), encoding="utf-8")
    print(f"wrote {target} ({target.stat().st_size} bytes)")
