r"""The main job: distil a dataset with a (meta) generator, for one or several IPCs.

    python -m experiments.distill --dataset=fashion_mnist --ipc=10 --out=runs/fmnist_ipc10

Stages (MGDD Fig. 1b, Alg. 2): load and preprocess the data; solve the Eq. 3 label model
once (fixed random θ, the whole training set); adapt the generator from the meta checkpoint
(or from scratch) for ``--steps``; generate every requested IPC in one forward pass each;
evaluate each synthetic set by training fresh networks on it. Writes to ``--out``:

* ``ipc{K}.npz``: images, labels, initial images, and metadata (dataset, preprocessing with
  the ZCA matrix, generator config, evaluation protocol);
* ``samples_ipc{K}.png``: initial vs generated images (Fig. 6);
* ``metrics.json``: accuracies and the timing breakdown (Tab. 1);
* ``generator/``: the adapted generator (orbax), so later runs can generate more IPCs with
  ``--meta_checkpoint=<out>/generator --steps=0``;
* ``config.json`` and ``adapt_history.json``.

Every bad input is reported before any work. See ``experiments/configs/distill.py`` for the
config variants (``cpu``, ``paper``, ``smoke``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import exit_on_bad_input
from experiments.configs.datasets import settings_for
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import checkpoint, data, evaluate, krr, labels, nets, outputs
from mgdd_jax import generator as gen_lib
from mgdd_jax.data import sources
from mgdd_jax.progress import stage

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "distill.py")

# Shorthand flag -> config path.
SHORTHANDS = (("dataset", "dataset"), ("ipc", "ipc"), ("meta_checkpoint", "meta_checkpoint"),
              ("out", "out"), ("seed", "seed"), ("data_dir", "data_dir"),
              ("steps", "adapt.steps"))


def define_flags() -> None:
    """Define ``--config`` and the shorthands; called by launchers, not at import, so that
    several launcher modules can be imported in one process (tests)."""
    config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Distill config file (variants: cpu, paper, smoke).",
        lock_config=True)
    flags.DEFINE_string("dataset", None, "Shorthand for --config.dataset.")
    flags.DEFINE_string("ipc", None, "Shorthand for --config.ipc, e.g. 10 or 1,10,50.")
    flags.DEFINE_integer("steps", None, "Shorthand for --config.adapt.steps.")
    flags.DEFINE_string("meta_checkpoint", None,
                        "Shorthand for --config.meta_checkpoint ('' = fresh generator).")
    flags.DEFINE_string("out", None, "Shorthand for --config.out (required).")
    flags.DEFINE_integer("seed", None, "Shorthand for --config.seed.")
    flags.DEFINE_string("data_dir", None, "Shorthand for --config.data_dir.")


def config_from_flags() -> ml_collections.ConfigDict:
    """The ``--config`` file with the shorthand flags copied in."""
    config = ml_collections.ConfigDict(flags.FLAGS.config.to_dict())
    for flag, path in SHORTHANDS:
        value = flags.FLAGS[flag].value
        if value is not None:
            node = config
            *parents, last = path.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
    return config


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything derived and validated from the config before any work."""

    config: ml_collections.ConfigDict
    out: str
    ipcs: tuple[int, ...]
    generator: gen_lib.GeneratorConfig  # image_channels filled in once the data is known
    adapt: adapt_lib.AdaptConfig
    meta_checkpoint: str


def parse_ipcs(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError("--ipc is empty; give images per class, e.g. --ipc=10 or --ipc=1,10,50")
    try:
        ipcs = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--ipc={text!r} must be a comma list of integers, e.g. 1,10,50") from None
    if any(k < 1 for k in ipcs):
        raise ValueError(f"--ipc={text!r}: every IPC must be >= 1")
    return tuple(sorted(set(ipcs)))


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Validate the config without touching data or doing any computation."""
    if not config.out:
        raise ValueError("--out is required: the directory the results are written to.")
    ipcs = parse_ipcs(config.ipc)
    sources.resolve_source(config.dataset)  # unknown dataset names fail here
    out = outputs.check_writable_dir(config.out)
    sizes = parse_ipcs(config.adapt.sizes) if config.adapt.sizes else ipcs
    init_mode = config.adapt.init_mode
    if init_mode == "auto":
        init_mode = "single" if len(sizes) == 1 else "multi"
    feature = nets.ConvNetConfig(**config.feature.to_dict())
    adapt_cfg = adapt_lib.AdaptConfig(
        steps=config.adapt.steps,
        learning_rate=config.adapt.learning_rate,
        final_lr_fraction=config.adapt.final_lr_fraction,
        batch_size=config.adapt.batch_size,
        reg=config.adapt.reg,
        init_mode=init_mode,
        sizes=sizes,
        label_mode=config.adapt.label_mode,
        feature=feature,
    )
    generator = gen_lib.GeneratorConfig(**config.generator.to_dict())
    meta = config.meta_checkpoint
    if meta:
        # Reads only the JSON side of the checkpoint; arrays are loaded later.
        _, stored = checkpoint.read_meta(meta)
        checkpoint.check_compatible(
            gen_lib.GeneratorConfig.from_dict(stored["generator"]), generator, meta
        )
    evaluate.get_protocol(config.eval.protocol)
    return Plan(config=config, out=out, ipcs=ipcs, generator=generator, adapt=adapt_cfg,
                meta_checkpoint=meta)


def _protocol(config: ml_collections.ConfigDict, dataset: str) -> evaluate.EvalProtocol:
    protocol = evaluate.get_protocol(config.eval.protocol, dataset)
    changes: dict[str, Any] = {"num_seeds": config.eval.num_seeds}
    if config.eval.steps:
        changes["steps"] = config.eval.steps
    return dataclasses.replace(protocol, **changes)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated plan with its loaded data: nothing can fail on bad input after this."""

    plan: Plan
    dataset: data.Dataset
    generator: gen_lib.GeneratorConfig
    adapt: adapt_lib.AdaptConfig
    protocol: evaluate.EvalProtocol


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Validate everything and load the data; raises ValueError & co. on bad input."""
    plan = make_plan(config)
    row = settings_for(config.dataset)
    stage(f"loading {config.dataset} (ZCA={row['zca']})")
    ds = data.load_dataset(config.dataset, data_dir=config.data_dir or None, zca=row["zca"],
                           image_size=row["image_size"] or None)
    for k in plan.ipcs:
        data.check_per_class(ds, k, what="IPC")
    for k in plan.adapt.sizes:
        data.check_per_class(ds, k, what="IPC (adapt.sizes)")
    data.check_per_class(ds, -(-plan.adapt.batch_size // ds.num_classes),
                         what="real batch per class (adapt.batch_size / classes)")
    generator = dataclasses.replace(plan.generator, image_channels=ds.channels)
    adapt_cfg = dataclasses.replace(
        plan.adapt, feature=dataclasses.replace(plan.adapt.feature, num_classes=ds.num_classes))
    return Prepared(plan, ds, generator, adapt_cfg, _protocol(config, config.dataset))


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Validate, then run the whole job; returns what is written to ``metrics.json``."""
    return execute(prepare(config))


def execute(prep: Prepared) -> dict[str, Any]:
    """The work itself, on a :class:`Prepared` job."""
    t_job = time.perf_counter()
    plan, ds, generator, adapt_cfg, protocol = (
        prep.plan, prep.dataset, prep.generator, prep.adapt, prep.protocol)
    config = plan.config
    c = ds.num_classes
    key = jax.random.key(config.seed)
    k_label, k_gen, k_adapt, k_init, k_eval = jax.random.split(key, 5)
    outputs.write_json(os.path.join(plan.out, "config.json"), config.to_dict())

    # Eq. 3: the label model, once, on every training image (Alg. 2 lines 1-4).
    t0 = time.perf_counter()
    label_model = labels.fit_label_model(
        k_label, ds.x_train, ds.y_train, c, adapt_cfg.feature, reg=config.labels.reg,
        chunk_size=config.labels.chunk_size)
    jax.block_until_ready(label_model.weights)
    t_labels = time.perf_counter() - t0
    stage(f"label model (Eq. 3) solved on {ds.x_train.shape[0]} images in {t_labels:.1f}s")

    if plan.meta_checkpoint:
        params, meta = checkpoint.load_generator(plan.meta_checkpoint, generator, ds.image_shape,
                                                 key=k_gen)
        start = f"{meta['info'].get('kind', 'checkpoint')} generator {plan.meta_checkpoint}"
    else:
        params = gen_lib.init_generator(k_gen, ds.image_shape, generator)
        start = "fresh generator (identity at init)"
    stage(f"adapting from {start} for {adapt_cfg.steps} steps")

    result = adapt_lib.adapt(k_adapt, params, ds, label_model, generator, adapt_cfg,
                             log_every=config.adapt.log_every)
    params = result.params
    outputs.write_json(os.path.join(plan.out, "adapt_history.json"), result.history)
    checkpoint.save_generator(
        os.path.join(plan.out, "generator"), adapt_cfg.steps, params, generator,
        {"kind": "adapted", "dataset": config.dataset, "adapt": adapt_cfg.to_dict(),
         "started_from": plan.meta_checkpoint or "fresh", "seed": config.seed},
        max_to_keep=1,
    )

    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "ipcs": list(plan.ipcs),
        "started_from": plan.meta_checkpoint or "fresh",
        "adapt": {"steps": adapt_cfg.steps, "init_mode": adapt_cfg.init_mode,
                  "sizes": list(adapt_cfg.sizes),
                  "final_loss": result.history[-1]["loss"] if result.history else None},
        "timing": {"label_solve_s": t_labels, "adaptation_s": result.seconds,
                   "adaptation_s_per_step": result.seconds_per_step},
        "results": {},
        "eval_protocol": protocol.to_dict(),
        "device": str(jax.devices()[0]),
    }
    for ipc in plan.ipcs:
        metrics["results"][str(ipc)] = _generate_and_evaluate(
            ipc, ds, params, generator, label_model, adapt_cfg, result, protocol, plan,
            jax.random.fold_in(k_init, ipc), jax.random.fold_in(k_eval, ipc))
    metrics["timing"]["total_s"] = time.perf_counter() - t_job
    outputs.write_json(os.path.join(plan.out, "metrics.json"), metrics)
    _summary(metrics)
    return metrics


def _generate_and_evaluate(ipc, ds, params, generator, label_model, adapt_cfg, result,
                           protocol, plan, k_init, k_eval) -> dict[str, Any]:
    config = plan.config
    c = ds.num_classes
    if result.single_init is not None and ipc == adapt_cfg.sizes[0]:
        x_init, l_init = result.single_init  # single-init mode: the images adapted on
        init_source = "adaptation's single initialisation"
    else:
        x_init, l_init = data.sample_initial_set(k_init, ds, ipc)
        init_source = "fresh class-balanced draw"
    # One forward pass, timed after a warm-up call on the same shape (which compiles).
    jax.block_until_ready(gen_lib.generate(params, x_init, ipc, generator))
    t0 = time.perf_counter()
    x_syn = jax.block_until_ready(gen_lib.generate(params, x_init, ipc, generator))
    gen_ms = 1e3 * (time.perf_counter() - t0)
    mode = labels.resolve_label_mode(adapt_cfg.label_mode, ipc)
    y_syn = labels.initial_labels(label_model, x_init, l_init, c, adapt_cfg.feature,
                                  adapt_cfg.label_mode, ipc)
    x_syn, y_syn = np.asarray(x_syn), np.asarray(y_syn)
    if not (np.all(np.isfinite(x_syn)) and np.all(np.isfinite(y_syn))):
        raise FloatingPointError(f"IPC {ipc}: the generated set has non-finite values")

    out: dict[str, Any] = {"generation_ms": gen_ms, "label_mode": mode,
                           "init": init_source,
                           "mean_abs_change": float(np.mean(np.abs(x_syn - x_init)))}
    meta = {"dataset": ds.metadata(), "generator": generator.to_dict(), "ipc": ipc,
            "label_mode": mode, "eval_protocol": protocol.to_dict(),
            "adapt": adapt_cfg.to_dict(), "seed": config.seed}
    outputs.write_npz(
        os.path.join(plan.out, f"ipc{ipc}.npz"), images=x_syn, labels=y_syn,
        class_ids=l_init, initial_images=x_init,
        metadata=np.asarray(json.dumps(meta, default=str)),
        **ds.preprocessing.to_arrays())
    outputs.save_before_after_png(
        os.path.join(plan.out, f"samples_ipc{ipc}.png"),
        ds.preprocessing.invert(x_init) if ds.preprocessing.zca is None else x_init,
        ds.preprocessing.invert(x_syn) if ds.preprocessing.zca is None else x_syn,
        l_init, ds.class_names, title=f"{config.dataset}, IPC {ipc}")
    if config.eval.enabled:
        stage(f"evaluating IPC {ipc} ({protocol.name} protocol, {protocol.num_seeds} seeds)")
        res = evaluate.evaluate_synthetic(k_eval, x_syn, y_syn, ds.x_test, ds.y_test, protocol,
                                          num_classes=c)
        out["eval"] = res
        if config.eval.random_baseline:
            base = evaluate.evaluate_synthetic(
                k_eval, x_init, krr.centred_onehot(l_init, c), ds.x_test, ds.y_test, protocol,
                num_classes=c)
            out["random_real_baseline"] = base
    return out


def _summary(metrics: dict[str, Any]) -> None:
    t = metrics["timing"]
    lines = [f"\n{metrics['dataset']}: labels {t['label_solve_s']:.1f}s, adaptation "
             f"{t['adaptation_s']:.1f}s ({t['adaptation_s_per_step']:.3f} s/step), "
             f"total {t['total_s']:.1f}s"]
    for ipc, r in metrics["results"].items():
        line = f"  IPC {ipc:>4}: generation {r['generation_ms']:.1f} ms"
        if "eval" in r:
            e = r["eval"]
            line += f", test acc {100 * e['mean']:.2f} ± {100 * e['std']:.2f}%"
        if "random_real_baseline" in r:
            b = r["random_real_baseline"]
            line += f" (random real: {100 * b['mean']:.2f} ± {100 * b['std']:.2f}%)"
        lines.append(line)
    print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with exit_on_bad_input():  # nothing is computed or written before this passes
        prep = prepare(config_from_flags())
    execute(prep)


if __name__ == "__main__":
    define_flags()
    app.run(main)
