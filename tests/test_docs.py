"""The generated documents equal what ``tools/gen_docs.py`` writes from the registries and the
published-checkpoint data (regenerate them with it), and the README stays an entry point."""

import re

import pytest

from tools import gen_docs


def test_the_readme_tables_and_pretrained_md_are_current():
    for path, text in gen_docs.documents(with_models=False).items():
        assert path.read_text() == text, f"{path.name} is stale: run python tools/gen_docs.py"


@pytest.mark.exhaustive  # 211 s here
def test_models_md_is_current():
    """docs/models.md traces every registered model for its parameter counts."""
    assert gen_docs.MODELS.read_text() == gen_docs.models_md(), \
        "docs/models.md is stale: run python tools/gen_docs.py"


def test_a_stale_document_is_found(tmp_path, monkeypatch):
    """A new block changes the README's generated table: ``--check`` then names the README."""
    from attnzoo import blocks

    readme = tmp_path / "README.md"
    readme.write_text(gen_docs.README.read_text())
    monkeypatch.setattr(gen_docs, "README", readme)
    monkeypatch.setattr(gen_docs, "documents", lambda: {readme: gen_docs.readme(readme.read_text())})
    assert gen_docs.main(["--check"]) == 0
    monkeypatch.setattr(blocks.registry._BLOCKS, "_entries",
                        {**blocks.registry._BLOCKS._entries,
                         "zzz": blocks.get_spec("se").__class__("zzz", blocks.SqueezeExcite)})
    assert gen_docs.main(["--check"]) == 1
    with pytest.raises(ValueError, match="no <!-- generated: blocks -->"):
        gen_docs.readme("# a README without the markers\n")


def test_the_readme_is_an_entry_point():
    text = gen_docs.README.read_text()
    assert len(text.splitlines()) <= 300
    hashes = re.findall(r"(?<![-\w/])[0-9a-f]{7,40}(?![-\w.])", text)
    assert not [h for h in hashes if re.search(r"[a-f]", h) and re.search(r"\d", h)], hashes
    for link in re.findall(r"\]\((docs/[\w.]+\.md)", text):
        assert (gen_docs.ROOT / link).is_file(), link
