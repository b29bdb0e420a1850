"""The library's default configs (ml_collections), one ``get_config(variant)`` per file.

* :mod:`mgdd_jax.configs.distill`: the main job and :func:`mgdd_jax.fit` (variants ``cpu``,
  ``paper``, ``smoke``, and knobs ``size=...,eval=...``);
* :mod:`mgdd_jax.configs.benchmark`: the baselines (:mod:`mgdd_jax.baselines`);
* :mod:`mgdd_jax.configs.meta`: meta-training (:mod:`mgdd_jax.meta_train`; variants ``gpu``,
  ``cpu``, ``smoke``, and ``base_config(source)``, Tab. 7's recipe, that every meta-training
  config builds on);
* :mod:`mgdd_jax.configs.keys`: the one exactly-these-keys check of a config subtree.
"""
