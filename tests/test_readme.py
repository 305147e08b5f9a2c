"""The README's short example runs as written, and the README stays a front door (about 150 lines)."""
import re

import pytest

from mkvlib.core.env import project_dir

README = project_dir() / "README.md"


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 160


@pytest.mark.slow
def test_the_short_example_runs(capsys, one_thread):
    code = re.search(r"## In a few lines\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 17
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "kl_to_base" in out
    lines = dict(line.split(" bytes: ", 1) for line in out.splitlines() if " bytes: " in line)
    assert [k.split(",")[0] for k in lines] == ["100%", "75%", "50%"]
    assert lines[next(iter(lines))].startswith("Paris"), "uncompressed, the model knows the capital of France"
