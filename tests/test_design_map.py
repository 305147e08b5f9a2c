"""docs/design.md maps the code: every module of mkvlib is listed once, and nothing listed is gone."""
import re

from mkvlib.core.env import project_dir


def test_every_module_is_on_the_map():
    root = project_dir()
    text = (root / "docs" / "design.md").read_text()
    listed = re.findall(r"^- \[`([^`]+)`\]\(\.\./mkvlib/", text, re.M)
    modules = sorted(str(p.relative_to(root / "mkvlib")) for p in (root / "mkvlib").rglob("*.py"))
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(set(modules) - set(listed)) == [], "modules missing from docs/design.md's map"
    assert sorted(set(listed) - set(modules)) == [], "docs/design.md lists modules that no longer exist"
