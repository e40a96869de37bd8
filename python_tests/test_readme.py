"""The README's Python example runs as written, on the shipped model, and does what its comments say."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO_ROOT


def readme_python_blocks() -> list[str]:
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as file:
        return re.findall(r"^```python\n(.*?)^```", file.read(), flags=re.S | re.M)


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
