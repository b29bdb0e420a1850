"""The tests of the library (mgdd_jax); the lab's launchers are tested in tests/launchers/."""
