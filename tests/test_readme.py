"""The README's ten-line example runs as written, and the README stays a front door (about 150 lines)."""
import re

import pytest

from mkvlib.runtime import project_dir

README = project_dir() / "README.md"


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 160


@pytest.mark.slow
def test_the_ten_line_example_runs(capsys, one_thread):
    code = re.search(r"## In ten lines\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 14
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "kl_to_base" in out and "The capital of France is" in out
