"""A positive control for the loop itself (`feedback=planted`): the reward of a text is how often it
says `phrase` (case-insensitive, capped at `cap`), plus optional seeded noise. The answer is known —
an aligned policy writes the phrase more often, on users it never trained on — so a loop that does
not learn it has a bug, whatever the real feedback would have said.

    python -m rlrec.train +experiment=trackrec_movielens feedback=planted feedback.phrase=comedy

>>> PlantedFeedback(phrase="comedy").score([1], [["A comedy fan.", "Dramas. COMEDY, comedy!"]], None)
array([[1., 2.]])
"""

from __future__ import annotations

import re

import numpy as np

from rlrec.feedback.base import Feedback
from rlrec.runtime.cache import fingerprint


class PlantedFeedback(Feedback):
    def __init__(
        self, ctx=None, downstream=None, phrase: str = "comedy", cap: int = 3, noise: float = 0.0, seed: int = 0
    ):
        if not phrase or not str(phrase).strip():
            raise ValueError("feedback.phrase must be a non-empty string")
        self.phrase, self.cap, self.noise, self.seed = str(phrase), int(cap), float(noise), int(seed)
        self.pattern = re.compile(re.escape(self.phrase), re.I)
        self.key = fingerprint("planted", self.phrase, self.cap, self.noise, self.seed)  # nothing to train: no refit

    def score(self, users, texts: list[list[str]], vectors=None) -> np.ndarray:
        counts = np.array([[min(len(self.pattern.findall(t)), self.cap) for t in row] for row in texts], float)
        if self.noise:  # seeded by the member and the texts, so a cached and a fresh score agree
            rng = np.random.default_rng([self.seed, int(fingerprint(texts)[:8], 16)])
            counts += self.noise * rng.normal(size=counts.shape)
        return counts
