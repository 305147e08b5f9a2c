"""The documents generated from data/ (mkvlib.docs): committed copies agree with the data, a changed number is
caught, the output is deterministic, marker blocks are filled from the data, and a new results source is one
registered function."""
import shutil
from pathlib import Path

import pytest

from mkvlib.docs import build, data_index, results
from mkvlib.docs.__main__ import main as docs_main
from mkvlib.docs.build import check, render_block, render_results, write
from mkvlib.docs.markdown import block, block_names, fill_blocks, table
from mkvlib.docs.records import Data

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory):
    """A copy of the checkout's data/ and generated documents elsewhere (LoRA adapter weights left out: no
    document reads them), to change files without touching the repository."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "data", root / "data", ignore=shutil.ignore_patterns("adapter_model.safetensors"))
    (root / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "results.md", root / "docs" / "results.md")
    return root


def fresh_copy(copy_root, tmp_path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(copy_root, root)
    return root


def test_committed_documents_agree_with_the_data():
    """docs/results.md, data/README.md and every generated block in README.md and docs/*.md equal what the
    data gives; on failure, run `make docs` (python -m mkvlib.docs --write) and commit."""
    stale = check(ROOT)
    assert not stale, "documents out of date (run `make docs`):\n" + "\n\n".join(stale.values())


def test_results_md_is_exactly_what_the_data_gives():
    assert render_results(Data(ROOT)) == (ROOT / "docs" / "results.md").read_text()


def test_output_is_deterministic_and_independent_of_the_checkout_path(copy_root):
    here = render_results(Data(ROOT))
    assert render_results(Data(ROOT)) == here                 # same input, same bytes
    assert render_results(Data(copy_root)) == here            # no absolute paths, no machine-specific text
    assert str(ROOT) not in here and str(copy_root) not in here


def test_a_number_that_disagrees_with_the_data_fails_the_check(copy_root, tmp_path):
    root = fresh_copy(copy_root, tmp_path)
    csv = root / "data" / "results" / "lm_eval_smollm2.csv"
    lines = csv.read_text().splitlines()
    assert ",piqa,0.657," in lines[1]
    lines[1] = lines[1].replace(",piqa,0.657,", ",piqa,0.757,")
    csv.write_text("\n".join(lines) + "\n")
    stale = check(root)
    assert "docs/results.md" in stale
    changed = [line for line in stale["docs/results.md"].splitlines() if line.startswith("+| 100%")]
    assert changed and [c.strip() for c in changed[0].split("|")[2:6]] == ["uncompressed", "50.3", "35.4", "75.7"]


def test_marker_blocks_are_filled_from_the_render_function():
    text = ("# Title\n\nKept <!-- generated: kept -->90%<!-- /generated --> at half the cache.\n\n"
            "<!-- generated: grid -->\n| old | table |\n<!-- /generated -->\n\nHand-written tail.\n")
    values = {"kept": "95.0%", "grid": table(["a", "b"], [[1, 2]])}
    filled = fill_blocks(text, values.__getitem__)
    assert "Kept <!-- generated: kept -->95.0%<!-- /generated --> at half the cache." in filled    # inline
    assert "<!-- generated: grid -->\n| a   |   b |\n|:----|----:|\n| 1   |   2 |\n<!-- /generated -->" in filled
    assert filled.startswith("# Title\n\n") and filled.endswith("\n\nHand-written tail.\n")      # rest untouched
    assert fill_blocks(filled, values.__getitem__) == filled                                    # idempotent
    assert block_names(filled) == ["kept", "grid"]
    quoted = "Write `<!-- generated: NAME -->` ... `<!-- /generated -->` around a table."
    assert block_names(quoted) == [] and fill_blocks(quoted, values.__getitem__) == quoted
    with pytest.raises(KeyError):
        fill_blocks("<!-- generated: nowhere -->x<!-- /generated -->", values.__getitem__)


def test_results_md_blocks_are_the_registered_tables():
    """docs/results.md is itself made of marker blocks: filling them from the data changes nothing, and a README
    can embed any of them by name."""
    text = (ROOT / "docs" / "results.md").read_text()
    names = block_names(text)
    assert names and set(names) <= set(results.SECTIONS)
    data = Data(ROOT)
    assert fill_blocks(text, lambda n: render_block(data, n)) == text


def test_a_stale_block_in_a_readme_is_caught_and_rewritten(copy_root, tmp_path, capsys):
    """The command line: --check exits 1 naming the stale file, --write fixes it, an unknown block exits 2."""
    root = fresh_copy(copy_root, tmp_path)
    data = Data(root)
    write(root)                                            # data/README.md for this copy
    readme = root / "README.md"
    readme.write_text("# Project\n\nTop-1: <!-- generated: ood-top1-50 -->999<!-- /generated -->.\n\n"
                      + block("bench-capacity", "| stale |") + "\n")
    assert docs_main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "README.md disagrees with data/" in err and "-Top-1: <!-- generated: ood-top1-50 -->999" in err
    assert docs_main(["--write", "--root", str(root)]) == 0
    assert capsys.readouterr().out == "wrote README.md\n"
    assert not check(root)
    text = readme.read_text()
    assert f"Top-1: <!-- generated: ood-top1-50 -->{render_block(data, 'ood-top1-50')}" in text
    assert render_block(data, "bench-capacity") in text
    readme.write_text(block("no-such-table", ""))
    assert docs_main(["--check", "--root", str(root)]) == 2
    assert "unknown generated block 'no-such-table'" in capsys.readouterr().err


def test_a_new_results_source_is_one_registered_function(copy_root, tmp_path, monkeypatch):
    root = fresh_copy(copy_root, tmp_path)
    (root / "data" / "results" / "example_suite.csv").write_text("domain,ratio\nbooks,1.25\n")
    assert "data/results/example_suite.csv" in render_results(Data(root)).split("## Other result files")[1]

    monkeypatch.setattr(results, "SECTIONS", dict(results.SECTIONS))

    @results.section("example-suite", "Example suite", "results/example_suite.*")
    def ood_suite(data):
        path = data.results / "example_suite.csv"
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        return "\n\n".join([results.source_line(data, path), table(["domain", "ratio"], rows),
                            results.commands_line([])])

    text = render_results(Data(root))
    assert "## Example suite\n\n<!-- generated: example-suite -->" in text
    assert "| books    |    1.25 |" in text and "Command: not recorded in the file." in text
    assert "## Other result files" not in text
    with pytest.raises(ValueError, match="already registered"):
        results.section("example-suite", "again")(ood_suite)


def test_data_index_lists_every_file_and_flags_missing_records_and_shared_names(copy_root, tmp_path):
    root = fresh_copy(copy_root, tmp_path)
    (root / "data" / "results" / "notes.json").write_text('{"x": 1}\n')
    (root / "data" / "projections" / "lm_eval_smollm2.csv").write_text("a\n1\n")
    data = Data(root)
    text = data_index.render_data_index(data)
    for path in data.files:
        assert f"`{data.rel(path)}`" in text
    housekeeping = text.split("## Housekeeping")[1]
    assert "- `data/results/notes.json`" in housekeeping                  # no command recorded anywhere
    assert "- `data/results/bench_memory.json`" not in housekeeping       # it records its command
    assert "`lm_eval_smollm2.csv`: `data/projections/lm_eval_smollm2.csv`, `data/results/lm_eval_smollm2.csv`" \
        in housekeeping
    assert "not recognised by the index" in text


def test_generated_files_are_the_ones_the_check_covers():
    assert set(build.GENERATED) == {"docs/results.md", "data/README.md"}
    assert all((ROOT / rel).is_file() for rel in build.GENERATED)


def test_a_fact_and_a_section_never_share_a_name():
    """A generated block is looked up by name among facts and sections: one name must mean one thing."""
    from mkvlib.docs import facts, results

    assert not set(facts.FACTS) & set(results.SECTIONS)
