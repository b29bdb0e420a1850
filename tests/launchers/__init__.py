"""Tests of the lab's launchers and configs (experiments/): they may import experiments; the
library's tests (tests/*.py) may not (tests/test_package.py checks)."""
