"""Shared test setup: every test writes into a temporary output folder, never the repo's."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Point outputs (figures, artifacts, runs) at a per-test temporary folder."""
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("LDT_RUN_DIR", raising=False)
    monkeypatch.delenv("LDT_ARTIFACTS_DIR", raising=False)
    monkeypatch.setenv("LDT_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Unit tests train tiny models: one torch thread is as fast, and far faster when the
    machine is busy (threads that wait on each other). Notebooks run in their own kernels."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
