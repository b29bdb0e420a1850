"""One distillation job's pieces below the public façade: its key split and its config.

:func:`job_keys` splits a job's key the same way everywhere (the main job, the baselines, the
studies), so a method given the same key draws the same θ, initial set and θ* stream.
:class:`FitConfig` is what Alg. 2 (:func:`mgdd_jax.api.fit_dataset`) needs, built from a
distill config (``mgdd_jax/configs/distill.py``).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import ml_collections

from mgdd_jax import adapt as adapt_lib
from mgdd_jax import checkpoint, data, nets
from mgdd_jax import generator as gen_lib


def job_keys(key: chex.PRNGKey) -> dict[str, jax.Array]:
    """The independent keys of one distillation job, split the same way everywhere."""
    names = ("labels", "generator", "adapt", "init", "eval")
    return dict(zip(names, jax.random.split(key, len(names))))


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What :func:`fit_dataset` needs, built from a distill config (no defaults of its own).

    Attributes:
      gen_config: the generator architecture (``image_channels`` from the data).
      adapt: Alg. 2's hyper-parameters (``feature.num_classes`` from the data).
      label_reg: ridge of the Eq. 3 label solve.
      label_chunk_size: rows per feature chunk of the label solve.
      meta_checkpoint: the generator to adapt from; "" for a fresh one.
    """

    gen_config: gen_lib.GeneratorConfig
    adapt: adapt_lib.AdaptConfig
    label_reg: float
    label_chunk_size: int
    meta_checkpoint: str

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, ipcs: tuple[int, ...],
                    meta_checkpoint: str) -> FitConfig:
        """Validate the config (no data needed): architectures, Alg. 2 settings, checkpoint."""
        feature = nets.ConvNetConfig(**config.feature.to_dict())
        adapt_cfg = adapt_lib.AdaptConfig.from_config(config.adapt.to_dict(), feature, ipcs)
        gen_config = gen_lib.GeneratorConfig(**config.generator.to_dict())
        if meta_checkpoint:
            # Reads only the JSON side of the checkpoint; arrays are loaded later.
            _, stored = checkpoint.read_meta(meta_checkpoint)
            checkpoint.check_compatible(
                gen_lib.GeneratorConfig.from_dict(stored["generator"]), gen_config,
                meta_checkpoint)
        return cls(gen_config, adapt_cfg, float(config.labels.reg),
                   int(config.labels.chunk_size), meta_checkpoint)

    def bind(self, dataset: data.Dataset) -> FitConfig:
        """Fill in the data-dependent fields and refuse what ``dataset`` cannot supply."""
        adapt_lib.check_adapt_inputs(dataset, self.adapt)
        feature = dataclasses.replace(self.adapt.feature, num_classes=dataset.num_classes)
        return dataclasses.replace(
            self, gen_config=dataclasses.replace(self.gen_config,
                                                 image_channels=dataset.channels),
            adapt=dataclasses.replace(self.adapt, feature=feature))
