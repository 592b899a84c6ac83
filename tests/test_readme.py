"""The README's model snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_model_snippet_runs_and_its_assertion_holds():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "domain.init()" in b)
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["order"].status == "SHIPPED"
