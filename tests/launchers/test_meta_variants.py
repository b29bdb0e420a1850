"""The lab's meta-training configs (experiments/configs/meta_*.py): every variant builds the
library's dataclasses and its switches are the ones its docstring names. The switches
themselves are tested in tests/test_meta_variants.py.
"""

import dataclasses

import pytest

from experiments.configs import (
    meta_fmnist_split,
    meta_glyphs,
    meta_imagenet,
    meta_shipped,
    meta_sources,
)
from mgdd_jax import meta_train, meta_val
from mgdd_jax.configs import meta as meta_config


def test_meta_fmnist_split_variants_set_their_order_and_refuse_unknown_names():
    """Each meta_fmnist_split variant builds the order its config names; an unknown variant is
    refused (the lab's half of tests/test_meta_variants.py's test_bad_variant_values_...)."""
    for variant in meta_fmnist_split.VARIANTS:
        c = meta_fmnist_split.get_config(variant)
        assert meta_train.meta_config(c).to_dict()["order"] == c.meta.order
    with pytest.raises(ValueError, match="variant"):
        meta_fmnist_split.get_config("fastest")


@pytest.mark.parametrize("module", [meta_glyphs, meta_fmnist_split, meta_imagenet,
                                    meta_sources, meta_shipped])
def test_every_meta_config_variant_builds_its_dataclasses(module):
    """Each variant of each meta config file builds MetaConfig and ValConfig (no typo in a
    field or a value) and its switches differ where the docstrings say; unknown variants are
    refused."""
    built = {}
    for variant in module.VARIANTS:
        c = module.get_config(variant)
        built[variant] = meta_train.meta_config(c)
        assert meta_val.ValConfig.from_config(c.val).tasks > 0
    with pytest.raises(ValueError, match="variant"):
        module.get_config("nope")
    if module is meta_fmnist_split:
        assert {v: (m.order, m.inner_opt, m.support, m.fixed_init) for v, m in built.items()
                } == {"fomaml": ("first", "adam", "disjoint", True),
                      "reptile": ("reptile", "adam", "disjoint", True),
                      "maml": ("second", "adam", "disjoint", True),
                      "alg1": ("second", "sgd", "in_batch", False),
                      "alg1_first": ("first", "sgd", "in_batch", False),
                      "meta_sgd": ("first", "meta_sgd", "disjoint", True)}
    if module is meta_sources:  # one recipe, one transfer bank; only the source differs
        assert len(set(built.values())) == 1
        configs = [module.get_config(v) for v in module.VARIANTS]
        assert {c.val.source for c in configs} == {module.BANK_SOURCE}
        assert len({c.source for c in configs}) == len(configs)
    if module is meta_shipped:  # the fractal source study's recipe from a random generator
        cpu, gpu = built["cpu"], built["gpu"]
        fractal = meta_train.meta_config(meta_sources.get_config("fractal"))
        assert cpu == dataclasses.replace(fractal, init="random", steps=400)
        assert gpu == dataclasses.replace(cpu, steps=5_000, tasks_per_step=64)
        assert module.get_config("cpu").source == meta_sources.SOURCES["fractal"]
    if module is meta_imagenet:
        paper, bank = built["paper"], built["bank"]
        assert (paper.order, paper.inner_opt, paper.tasks_per_step, paper.steps) == (
            "second", "sgd", 1, 200_000)  # Tab. 7 as written
        assert (bank.inner_opt, bank.support, bank.fixed_init, bank.tasks_per_step) == (
            "adam", "disjoint", True, 16)


def test_meta_glyphs_is_the_library_config_on_the_glyph_corpus():
    """experiments/configs/meta_glyphs.py holds no values of its own: each variant is
    mgdd_jax/configs/meta.py's of the same name on ``glyphs``, and the recipes built on
    ``base_config`` get the library's."""
    assert meta_glyphs.VARIANTS == meta_config.VARIANTS
    for variant in (None, *meta_glyphs.VARIANTS):
        c = meta_glyphs.get_config(variant)
        assert c.source == "glyphs"
        assert c.to_dict() == meta_config.get_config(variant, source="glyphs").to_dict()
    assert meta_glyphs.base_config is meta_config.base_config
