"""docs/configuration.md is what the settings structs and config/default.toml say today.

It is generated (``step-audio-gateway config-reference > docs/configuration.md``), so the
reference cannot drift from the code: a new or renamed setting, a changed default or comment
makes this test fail until the file is regenerated, as the OpenAPI freshness test does.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import ROOT

REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "regenerate it: .venv/bin/step-audio-gateway config-reference > docs/configuration.md"


def test_the_committed_reference_is_fresh():
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config-reference"], cwd=ROOT,
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == REFERENCE.read_text(), f"docs/configuration.md is stale; {REGENERATE}"


def test_every_default_key_is_documented_with_its_environment_variable():
    text = REFERENCE.read_text()
    defaults = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    for section, table in defaults.items():
        if section in ("models", "voices"):  # tables of entries, documented by their fields
            assert f"## [{section}]" in text
            continue
        for key, value in table.items():
            if isinstance(value, dict):  # [limits.per_key."<key>"]: entries, not settings
                continue
            assert f"### `{section}.{key}`" in text, f"{section}.{key} missing; {REGENERATE}"
            assert f"`GATEWAY__{section.upper()}__{key.upper()}`" in text


def test_an_unknown_config_is_refused_not_documented(tmp_path):
    """The command reads the settings it documents: a file they reject is an error."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nportt = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config-reference", "--config", str(bad)], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "portt" in result.stderr


def test_the_readme_links_the_references():
    readme = (ROOT / "README.md").read_text()
    assert "docs/configuration.md" in readme and "docs/compatibility.md" in readme
