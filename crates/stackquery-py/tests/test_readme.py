"""The README's Python quick start, as written there (it must stay true)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


@pytest.mark.skipif(not README.exists(), reason="run from the repository")
def test_the_readme_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    section = text[text.index("## Python") :]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    assert out == ["{'id': 7, 'name': 'Ada'}", "{'id': 7, 'name': 'Ada'}"]
