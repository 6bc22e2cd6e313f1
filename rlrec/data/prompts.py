"""Prompt view: per-user prompts from the prompt history (N samples are per user), per-item
prompts, rendered from editable Jinja2 template files.

A template is a bare name (`kar_user_movie` → `rlrec/data/templates/kar_user_movie.j2`) or a
path to your own file. Variables: `user` (side features), `history` (list of dicts with title,
rating, label and item features, oldest first), `item`/`target`, `candidates`, `summary`, `k`,
and `domain` (the dataset's nouns: item, plural, verb, history, preference).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import jinja2
import numpy as np

from rlrec.data.features import PreparedData
from rlrec.data.schema import DataError

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_DOMAIN = {
    "item": "movie",
    "plural": "movies",
    "verb": "watched",
    "history": "watching history",
    "preference": "movie watch",
}


class PromptTemplate:
    def __init__(self, template: str):
        path = Path(template)
        if path.suffix != ".j2" or not path.exists():
            candidate = TEMPLATE_DIR / f"{template}.j2"
            if candidate.exists():
                path = candidate
            elif not path.exists():
                names = sorted(p.stem for p in TEMPLATE_DIR.glob("*.j2"))
                raise DataError(f"prompt template {template!r} is neither a file nor one of {names}")
        self.path = path
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # by content, not location
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        try:
            self.template = env.from_string(path.read_text())
        except jinja2.TemplateSyntaxError as e:
            raise DataError(f"{path}: line {e.lineno}: template syntax error: {e.message}") from e

    def render(self, **ctx) -> str:
        ctx.setdefault("domain", DEFAULT_DOMAIN)
        try:
            return self.template.render(**ctx).strip()
        except jinja2.UndefinedError as e:
            raise DataError(f"{self.path}: {e.message} (variables given: {sorted(ctx)})") from e


class PromptView:
    """Renders prompts from a PreparedData. Entities are plain dicts so templates stay simple."""

    def __init__(self, prep: PreparedData, domain: dict | None = None, history_max_len: int | None = None):
        self.prep = prep
        self.domain = {**DEFAULT_DOMAIN, **(domain or {})}
        self.history_max_len = history_max_len

    @cached_property
    def _items(self) -> list[dict]:
        return self.prep.items.to_dict("records")

    @cached_property
    def _users(self) -> list[dict]:
        return self.prep.users.to_dict("records")

    @cached_property
    def histories(self) -> dict[int, np.ndarray]:
        return self.prep.prompt_history(self.history_max_len)

    def item(self, i: int) -> dict:
        return self._items[i - 1]

    def user(self, u: int) -> dict:
        return self._users[u - 1]

    def history(self, u: int) -> list[dict]:
        f = self.prep.frame
        rows = self.histories.get(u, np.array([], dtype=np.int64))
        return [
            {**self.item(int(i)), "rating": float(r), "label": float(lab)}
            for i, r, lab in zip(f["i"].to_numpy()[rows], f["rating"].to_numpy()[rows], f["label"].to_numpy()[rows])
        ]

    def user_prompts(self, template: PromptTemplate | str, users=None) -> dict[int, str]:
        """u → prompt, for every user with a non-empty prompt history (or the given users)."""
        t = PromptTemplate(template) if isinstance(template, str) else template
        users = sorted(self.histories) if users is None else users
        return {int(u): t.render(user=self.user(u), history=self.history(u), domain=self.domain) for u in users}

    def item_prompts(self, template: PromptTemplate | str, items=None) -> dict[int, str]:
        t = PromptTemplate(template) if isinstance(template, str) else template
        items = range(1, self.prep.spec.num_items + 1) if items is None else items
        return {int(i): t.render(item=self.item(i), domain=self.domain) for i in items}
