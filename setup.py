"""Build script: the Python package, plus the compiled extension when a compiler is available."""

from setuptools import setup

setup()
