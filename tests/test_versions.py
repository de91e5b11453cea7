"""The tested library ranges come from pyproject.toml, and a run outside one is told so at start-up."""

from __future__ import annotations

import logging
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from exp3rt import CONF_DIR, versions
from exp3rt.versions import REACHED_INTO, untested_versions


def test_the_ranges_are_pyprojects_and_bound_every_reached_into_library():
    project = tomllib.loads((CONF_DIR.parent / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    specs = {r.name: str(r.specifier) for r in declared if r.name in REACHED_INTO}
    assert versions.tested_ranges() == specs
    for name in ("transformers", "peft", "deepspeed", "pytorch-lightning"):  # both ends bounded
        assert "<" in specs[name] and ">=" in specs[name], name


def test_the_installed_versions_are_inside_and_an_upgrade_past_the_range_is_named():
    assert untested_versions() == []
    found = untested_versions(installed=lambda name: Version("6.1.0") if name == "transformers" else None)
    assert len(found) == 1 and found[0].startswith(
        "transformers 6.1.0 is outside the range exp3rt was tested with"
    )
    assert "KV cache" in found[0] and found[0].endswith("pip install 'transformers<6,>=5.0'")


def test_an_entry_point_says_it_once_at_start_up(monkeypatch, caplog):
    from exp3rt.cli.common import fail_cleanly

    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "untested_versions", lambda: ["peft 0.30.0 is outside the range"])
    with caplog.at_level(logging.WARNING), fail_cleanly(logging.getLogger("t")):
        pass
    with fail_cleanly(logging.getLogger("t")):
        pass
    assert [r.getMessage() for r in caplog.records].count("peft 0.30.0 is outside the range") == 1
