"""Shared fixtures. Tests need no network and build their own tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def raw_params() -> dict:
    """The repository's params.yaml as a plain dict, to modify in a test."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def tracking_env(tmp_path, monkeypatch):
    """Point MLflow at a throw-away store inside the test's folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
