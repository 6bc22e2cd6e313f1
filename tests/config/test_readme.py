"""The README is a page a newcomer reads in minutes, its results carry their provenance, and the user
docs name no path of the machine they were written on and no issue tracker entry."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = ROOT / "README.md"
MAX_LINES = 200
CPUS = ("Intel Xeon", "AMD EPYC")
# pages a user reads: what they must not name (a path of one machine, an issue number)
USER_DOCS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "experiments").glob("*.md")),
    *sorted(p for p in (ROOT / "sweeps").rglob("*") if p.is_file()),
    *sorted(p for p in (ROOT / "benchmarks" / "results").rglob("*") if p.is_file()),
]
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|work|root|home)/(?!me/my_conf\b)")  # /home/me/my_conf: an example
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.

    >>> anchor("Run the main job")
    'run-the-main-job'
    >>> anchor("Tables: `dataset=table`")
    'tables-datasettable'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^##+ (.+)$", text, flags=re.M)]


def results_rows(text: str) -> list[str]:
    """The body rows of the README's results table: the first table under `## Results`."""
    body = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    assert len(rows) > 2, "README: no table under '## Results'"
    return rows[2:]  # header and separator first


def test_readme_is_short():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/ (at most {MAX_LINES})"
    # a contents list near the top links every section of the page, and each link lands on one
    head = "\n".join(lines[:40])
    links = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)$", head, flags=re.M)
    targets = {anchor(s) for s in sections(text)}
    assert len(links) >= 5, "README: no contents list of section links in its first 40 lines"
    assert set(links) <= targets, f"README contents: links to no section: {sorted(set(links) - targets)}"
    second_level = {anchor(m) for m in re.findall(r"^## (.+)$", text, flags=re.M)} - {"contents"}
    assert second_level <= set(links), f"README contents: sections not listed: {sorted(second_level - set(links))}"


def test_every_readme_result_row_has_date_commit_and_cpu():
    rows = results_rows(README.read_text())
    experiments = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    named = set()
    for row in rows:
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", row), f"README result row without a date: {row}"
        assert re.search(r"`[0-9a-f]{7,40}`", row), f"README result row without a commit in backticks: {row}"
        assert any(cpu in row for cpu in CPUS), f"README result row without a CPU ({' or '.join(CPUS)}): {row}"
        named |= {e for e in experiments if f"[{e}]" in row}
    expected = {"trackrec_movielens", "trackrec_synthetic", "dpo4rec_movielens", "kar_movielens"}
    expected |= {"reclaif_movielens", "backbone_only", "rerank_only"}
    assert named >= expected, f"README results: no row for {sorted(expected - named)}"


def offending_lines(path) -> list[str]:
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for pattern, what in ((MACHINE_PATH, "machine path"), (ISSUE, "issue reference")):
            if pattern.search(line):
                out.append(f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()[:120]}")
    return out


def test_the_checks_catch_what_they_should():
    assert MACHINE_PATH.search("saved to /tmp/run3/results.json") and MACHINE_PATH.search("(/root/.cache/x)")
    assert MACHINE_PATH.search("`/work/main/outputs`") and MACHINE_PATH.search("/home/alice/data")
    assert not MACHINE_PATH.search("hydra.searchpath=[file:///home/me/my_conf]")  # a documented example
    assert not MACHINE_PATH.search("dataset.path=/data/ml-100k and ~/my_conf and benchmarks/.venv-peer/bin/python")
    assert ISSUE.search("as issue #12 asks") and ISSUE.search("Issue 7") and not ISSUE.search("the issue's bar")


def test_no_machine_paths_or_issue_numbers_in_user_docs():
    found = [line for path in USER_DOCS for line in offending_lines(path)]
    assert not found, "user docs name a machine path or an issue number:\n" + "\n".join(found)
