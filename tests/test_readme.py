"""The README's SQL examples give the output the README shows (see
tests/readme_examples.py for how they are run and compared)."""

import readme_examples


def test_readme_examples_match_a_real_run():
    checked = [b for b in readme_examples.blocks(readme_examples.README.read_text()) if b.checked]
    assert len(checked) >= 20, "the README's ```sql blocks were not found"
    bad = readme_examples.check_all()
    report = "\n\n".join(
        f"README.md line {b.start + 1}: psql now prints\n" + "\n".join(got) for b, _, got in bad
    )
    assert not bad, report + "\n\n(python3 tests/readme_examples.py --update rewrites them)"
