"""The README's Python example runs, as written, on the bundled model (doctest), and the README keeps its promises
to users: the set-up commands, no internal trial names or issue numbers."""

from __future__ import annotations

import doctest
import re
import shutil

import pytest

from conftest import REPO, SHARED_DATA, xray

README = REPO / "README.md"


def _python_examples() -> str:
    """The README's ```python blocks that are doctests (they start with '>>>')."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return "\n".join(b for b in blocks if b.lstrip().startswith(">>>"))


def test_readme_python_example_runs_on_the_bundled_model(tmp_path, monkeypatch):
    """Every line of the example is executed and its output compared; nothing is skipped. ``scan.jpeg`` is a real
    X-ray when ../shared/data is present, else a synthetic one (the example's checks hold for either)."""
    real = SHARED_DATA / "chest_xray_fullres" / "val" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
    if real.is_file():
        shutil.copy(real, tmp_path / "scan.jpeg")
    else:
        xray(0, 256).save(tmp_path / "scan.jpeg", quality=92)
    monkeypatch.chdir(tmp_path)
    text = _python_examples()
    assert "pneumo.load()" in text and "+SKIP" not in text
    test = doctest.DocTestParser().get_doctest(text, {}, "README.md", str(README), 0)
    assert len(test.examples) >= 10
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted == len(test.examples)


def test_readme_keeps_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert 'pip install -e ".[all]" && pneumo serve' in text
    assert 'pip install -e ".[dev]" && python -m pytest -q' in text
    assert text.index("## Quickstart") < text.index("## Set-up: two commands")
    assert 'pip install -e ".[serve]"' in text.split("## Set-up")[0]  # the light install comes first


@pytest.mark.parametrize("word", ["issue", "g2s1", "occ1", "occ2", "occ3", "this stop"])
def test_readme_speaks_to_users(word):
    """History, trial names and per-machine talk live in docs/, not in the users' README."""
    assert word not in README.read_text(encoding="utf-8").lower()
