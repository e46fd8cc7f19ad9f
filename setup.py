"""Kept for tools that call setup.py directly; metadata lives in pyproject.toml."""

from setuptools import setup

setup()
