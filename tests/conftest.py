"""Shared fixtures. The real default model is loaded once per test session."""
import os

import pytest

# Tests send traffic to this machine only: git hosts other than allow-listed ones are refused
# before any DNS lookup, here and in every service process a test starts (they inherit this).
os.environ.setdefault("NAMM_BATCHES__GIT_ALLOW_PUBLIC_HOSTS", "false")


@pytest.fixture(scope="session")
def lm():
    from namm import load_model

    return load_model()
