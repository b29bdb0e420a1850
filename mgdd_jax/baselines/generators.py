"""The generator methods (MGDD Alg. 2 from three starts) and the random-real baseline.

* ``random``: the class-balanced random real images that the generator methods start from
  (the same draw for the same key), with centred one-hot labels (MGDD Tab. 8's "random").
* ``identity``: Alg. 2 from our fresh generator, whose zero-initialised residual makes it
  exactly the identity at step 0 (``mgdd_jax.generator.init_generator``).
* ``scratch``: Alg. 2 from a *random* initialisation, the paper's "w/o Meta" (Tab. 2,
  Fig. 4): every convolution kernel, the zero-initialised output conv and the channel adaptors
  included, drawn as flax initialises a plain ``nn.Conv`` (LeCun normal), so step 0 is not the
  identity (:func:`mgdd_jax.generator.random_generator`).
* ``mgdd``: Alg. 2 from the meta generator of ``config.meta_checkpoint`` (the benchmark
  config's is the shipped v2 generator; the distill default start is ``identity``'s).

All three generator methods run :func:`mgdd_jax.job.job_keys`' split of the method key, so for
the same key they share the Eq. 3 label model, the initial images, the real batches and the θ*
draws: only the starting parameters differ. Their snapshot time counts the label solve
(Alg. 2 l. 1-4, on every training image), the adaptation steps and the generation (one forward
pass), as Tab. 1 does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax import adapt as adapt_lib
from mgdd_jax import checkpoint, data, krr, labels
from mgdd_jax import job as job_lib
from mgdd_jax import generator as gen_lib
from mgdd_jax.baselines import Snapshot, check_snapshot_steps, register

def _fit_config(config: Any, ds: data.Dataset, ipc: int, steps: int,
                meta_checkpoint: str) -> job_lib.FitConfig:
    fit = job_lib.FitConfig.from_config(config, (ipc,), meta_checkpoint).bind(ds)
    return dataclasses.replace(fit, adapt=dataclasses.replace(
        fit.adapt, steps=max(steps, 1), init_mode="single", ipcs=(ipc,)))


def _generator_method(start: str):
    def method(key: chex.PRNGKey, ds: data.Dataset, ipc: int, snapshot_steps: Sequence[int],
               config: Any) -> Iterator[Snapshot]:
        snapshot_steps = check_snapshot_steps(snapshot_steps)
        data.check_per_class(ds, ipc, what="IPC")
        meta_ckpt = config.meta_checkpoint if start == "mgdd" else ""
        if start == "mgdd" and not meta_ckpt:
            raise ValueError("method 'mgdd' needs config.meta_checkpoint (a meta generator); "
                             "use 'identity' for a fresh generator")
        fit = _fit_config(config, ds, ipc, snapshot_steps[-1], meta_ckpt)
        keys = job_lib.job_keys(key)
        c = ds.num_classes
        t0 = time.perf_counter()
        label_model = labels.fit_label_model(
            keys["labels"], ds.x_train, ds.y_train, c, fit.adapt.feature, reg=fit.label_reg,
            chunk_size=fit.label_chunk_size)
        jax.block_until_ready(label_model.weights)
        t_labels = time.perf_counter() - t0
        if start == "mgdd":
            params = checkpoint.load_generator(meta_ckpt, fit.gen_config, ds.image_shape,
                                               key=keys["generator"])[0]
        elif start == "scratch":
            params = gen_lib.random_generator(keys["generator"], ds.image_shape,
                                              fit.gen_config)
        else:
            params = gen_lib.init_generator(keys["generator"], ds.image_shape, fit.gen_config)
        x_init, l_init = adapt_lib.single_init_set(keys["adapt"], ds, ipc)
        y = np.asarray(labels.initial_labels(label_model, x_init, l_init, c, fit.adapt.feature,
                                             fit.adapt.label_mode, ipc), np.float32)
        snaps: list[Snapshot] = []
        excluded = [0.0]  # host copies of the snapshots

        def on_step(step: int, p: Any) -> None:
            t_gen = time.perf_counter()
            x = gen_lib.generate(p, x_init, ipc, fit.gen_config)
            jax.block_until_ready(x)
            t_copy = time.perf_counter()
            x = np.asarray(x, np.float32)
            excluded[0] += time.perf_counter() - t_copy
            now = time.perf_counter()
            timing = {"label_solve_s": t_labels, "generation_s": t_copy - t_gen,
                      "distill_s": now - t0 - excluded[0] - t_labels - (t_copy - t_gen)}
            snaps.append(Snapshot(step, now - t0 - excluded[0], x, y, timing))
            if step == snapshot_steps[-1]:  # a new IPC's cost: one warm forward pass
                t_warm = time.perf_counter()
                jax.block_until_ready(gen_lib.generate(p, x_init, ipc, fit.gen_config))
                timing["warm_generation_s"] = time.perf_counter() - t_warm
                excluded[0] += timing["warm_generation_s"]

        if snapshot_steps == (0,):
            on_step(0, params)
        else:
            adapt_lib.adapt(keys["adapt"], params, ds, label_model, fit.gen_config, fit.adapt,
                            progress=False, callback=on_step, callback_steps=snapshot_steps)
        yield from snaps

    method.__name__ = start
    method.__doc__ = f"Alg. 2 from the {start!r} start (module docstring)."
    return method


identity = register("identity")(_generator_method("identity"))
scratch = register("scratch")(_generator_method("scratch"))
mgdd = register("mgdd")(_generator_method("mgdd"))


@register("random")
def random_real(key: chex.PRNGKey, ds: data.Dataset, ipc: int, snapshot_steps: Sequence[int],
                config: Any) -> Iterator[Snapshot]:
    """Class-balanced random real images (the generator methods' initial set), one-hot labels.

    No optimisation: one snapshot at step 0, whatever ``snapshot_steps`` asks.
    """
    del config
    check_snapshot_steps(snapshot_steps)
    data.check_per_class(ds, ipc, what="IPC")
    t0 = time.perf_counter()
    x, l = adapt_lib.single_init_set(job_lib.job_keys(key)["adapt"], ds, ipc)
    y = np.asarray(krr.centred_onehot(jnp.asarray(l), ds.num_classes), np.float32)
    yield Snapshot(0, time.perf_counter() - t0, np.asarray(x, np.float32), y,
                   {"distill_s": 0.0})
