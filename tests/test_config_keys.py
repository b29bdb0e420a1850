"""mgdd_jax.configs.keys.check_keys: the one "exactly these config keys" check, and its users."""

import dataclasses
import re

import ml_collections
import pytest

from mgdd_jax import meta_val, multihost
from mgdd_jax.baselines import frepo
from mgdd_jax.configs.keys import check_keys

EXPECTED = ("lr", "steps", "seed")


def test_exactly_the_expected_keys_pass():
    check_keys({"seed": 0, "lr": 1.0, "steps": 3}, EXPECTED, "config.x", "fix it")
    check_keys(ml_collections.ConfigDict({"lr": 1.0, "steps": 3, "seed": 0}), EXPECTED,
               "config.x", "fix it")
    check_keys([], [], "config.x", "fix it")


def test_missing_keys_are_named():
    with pytest.raises(ValueError) as e:
        check_keys({"lr": 1.0}, EXPECTED, "config.x", "set them all")
    assert str(e.value) == "config.x: missing fields ['seed', 'steps']; set them all"


def test_unknown_keys_are_named():
    with pytest.raises(ValueError) as e:
        check_keys({"lr": 1.0, "steps": 3, "seed": 0, "sed": 1}, EXPECTED, "config.x",
                   "drop it")
    assert str(e.value) == "config.x: unknown fields ['sed']; drop it"


def test_missing_and_unknown_keys_in_one_line():
    with pytest.raises(ValueError) as e:
        check_keys({"lr": 1.0, "step": 3, "seed": 0}, EXPECTED, "config.x", "rename step")
    message = str(e.value)
    assert message == "config.x: unknown fields ['step'], missing fields ['steps']; rename step"
    assert "\n" not in message


@pytest.mark.parametrize("build, what, good", [
    (meta_val.ValConfig.from_config, "config.val",
     {"tasks": 2, "steps": 3, "every": 1, "learning_rate": 1e-4, "b1": 0.9, "b2": 0.999,
      "eval_draws": 1, "seed": 0, "source": ""}),
    (multihost.MultihostConfig.from_config, "config.distributed",
     {"coordinator_address": "", "num_processes": 0, "process_id": -1,
      "initialization_timeout_s": 60, "heartbeat_timeout_s": 5, "shutdown_timeout_s": 10}),
])
def test_config_subtrees_use_the_one_check(build, what, good):
    build(good)
    bad = {k: v for k, v in good.items() if k != "seed" and k != "process_id"}
    dropped = sorted(set(good) - set(bad))
    with pytest.raises(ValueError, match=re.escape(
            f"{what}: unknown fields ['extra'], missing fields {dropped}; ")):
        build({**bad, "extra": 1})


def test_frepo_config_uses_the_one_check():
    fields = {f.name: None for f in dataclasses.fields(frepo.FrepoConfig)}
    with pytest.raises(ValueError, match=r"^config\.frepo: unknown fields \['lr'\]; build it"):
        frepo.FrepoConfig.from_config({**fields, "lr": 1.0})
