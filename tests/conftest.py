"""Shared fixtures. The real default model is loaded once per test session."""
import pytest


@pytest.fixture(scope="session")
def lm():
    from namm import load_model

    return load_model()
