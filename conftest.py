"""Doctests of the modules run in a fresh temporary directory each, so their
examples can write files the way a user would."""
import pytest


@pytest.fixture(autouse=True)
def _doctest_in_tmp_path(request, tmp_path, monkeypatch):
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(tmp_path)
