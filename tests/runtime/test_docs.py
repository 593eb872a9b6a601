"""The README's configuration table names every setting the processes read."""

from __future__ import annotations

from pathlib import Path

from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`PARTNERHUB_{name.upper()}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_quickstart_is_the_two_make_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines() if line.startswith("make ")]
    assert commands == ["make up", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\nup:" in makefile and "\ntest:" in makefile
