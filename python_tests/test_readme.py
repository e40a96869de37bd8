"""The README's Python example runs as written, on the shipped model, and does what its comments say."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO_ROOT


def readme_text() -> str:
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as file:
        return file.read()


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", readme_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written():
    blocks = readme_python_blocks()
    assert len(blocks) == 1, "a new Python block in the README: run it here too"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    translator, nar4 = namespace["translator"], namespace["nar4"]
    sentence = ["Ein Mann fährt Fahrrad."]
    # generate on the tensors the example builds gives what translate gives for the same options
    assert translator.tokenizer.decode(namespace["target_ids"][0]) == translator.translate(sentence, nar4)[0]
    # the speculative mode's output is AR greedy's, as its comment says
    assert translator.translate(sentence, mode="spec") == translator.translate(sentence)
    # the int8 translator released the model's fp32 matrices and still translates
    int8 = namespace["int8"]
    assert int8.translate(sentence)[0].strip()
    with pytest.raises(ValueError, match="held only by the engine"):
        int8.translate(sentence, precision="fp32")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation but '-' and '_' dropped,
    spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_links_lead_somewhere():
    """Every relative link of the README names a file of the repository, and every #anchor a heading
    (of the README, or of the linked Markdown file)."""
    links = re.findall(r"\]\(([^)\s]+)\)", readme_text())
    assert len(links) > 20
    for link in links:
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        target = os.path.join(REPO_ROOT, path) if path else os.path.join(REPO_ROOT, "README.md")
        assert os.path.exists(target), f"README links to {link}: no {path}"
        if anchor:
            with open(target, encoding="utf-8") as file:
                headings = re.findall(r"^#+ (.+)$", file.read(), flags=re.M)
            anchors = {github_anchor(heading) for heading in headings}
            assert anchor in anchors, f"README links to {link}: no such heading"
