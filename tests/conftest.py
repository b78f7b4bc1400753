"""Shared test setup: every test writes into a temporary output folder, never the repo's."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Point outputs (figures, artifacts, runs) at a per-test temporary folder."""
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("LDT_RUN_DIR", raising=False)
    monkeypatch.delenv("LDT_ARTIFACTS_DIR", raising=False)
    monkeypatch.setenv("LDT_PROGRESS", "0")
