"""A thin shim: the package metadata is in pyproject.toml (PEP 621)."""
from setuptools import setup

setup()
