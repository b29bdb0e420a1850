r"""The main job: distil a dataset with a (meta) generator, for one or several IPCs.

    mgdd-jax distill --dataset=fashion_mnist --ipc=10 --out=runs/fmnist_ipc10

Stages (MGDD Fig. 1b, Alg. 2): load and preprocess the data; solve the Eq. 3 label model
once (fixed random θ, the whole training set); adapt the generator from the meta checkpoint
(or from scratch) for ``--steps``; generate every requested IPC in one forward pass each;
evaluate each synthetic set by training fresh networks on it. Writes to ``--out``:

* ``ipc{K}.npz``: images, labels, initial images, and metadata (dataset, preprocessing with
  the ZCA matrix, generator config, evaluation protocol, ``ds_factor``: under the DS
  parameterisation the images are stored at 1/ds_factor resolution, ds_factor² per budget
  image, and ``mgdd_jax.parameterisation.decode`` gives the images networks train on);
* ``cross_arch.md`` with ``--eval_arch`` listing several architectures (Tab. 4);
* ``samples_ipc{K}.png``: initial vs generated images (Fig. 6);
* ``metrics.json``: accuracies and the timing breakdown (Tab. 1);
* ``generator/``: the adapted generator (orbax), so later runs can generate more IPCs with
  ``--meta_checkpoint=<out>/generator --steps=0``;
* ``config.json`` and ``adapt_history.json``.

Every bad input is reported before any work. Results appear all at once or not at all: the
run is written into a temporary sibling of ``--out`` and renamed into place at the end; a
failed or interrupted run leaves ``--out`` as it was. An ``--out`` that already holds results
is refused unless ``--overwrite``. See ``mgdd_jax/configs/distill.py`` for the config knobs
(``size=cpu|paper|smoke``, ``eval=cpu|frepo|smoke``) and presets (``cpu``, ``paper``,
``smoke``). The work itself is :func:`mgdd_jax.api.fit_dataset`.

The paper's studies are options (README, "The paper's studies as options"): ``--objective``
(Tab. 3), ``--eval_arch`` (Tab. 4), ``--reinit_seed`` (Tab. 5), ``--config.adapt.ds_factor``
(Tab. 6), ``--config.generator.size_embedding`` (Fig. 3), ``--config.adapt.label_mode``
(Fig. 4), ``--config.image_size`` (Tab. 9).
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

from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, checkpoint, data, evaluation, krr, labels, nets, outputs
from mgdd_jax import objective as objective_lib
from mgdd_jax import parameterisation
from mgdd_jax.cli import common as cli
from mgdd_jax.configs import distill as distill_config
from mgdd_jax.data.settings import settings_for
from mgdd_jax.data import sources
from mgdd_jax.progress import stage

DEFAULT_CONFIG = distill_config.__file__

# Shorthand flag -> config path.
SHORTHANDS = (("dataset", "dataset"), ("ipc", "ipc"), ("meta_checkpoint", "meta_checkpoint"),
              ("out", "out"), ("seed", "seed"), ("data_dir", "data_dir"),
              ("steps", "adapt.steps"), ("overwrite", "overwrite"),
              ("objective", "adapt.objective"), ("eval_arch", "eval.archs"),
              ("reinit_seed", "reinit_seed"))


def define_flags() -> None:
    """Define ``--config`` and the shorthands; called by launchers, not at import, so that
    several launcher modules can be imported in one process (tests)."""
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG,
        "Distill config file and knobs, e.g. distill.py:paper or distill.py:size=paper,eval=cpu.",
        lock_config=True)
    flags.DEFINE_string("dataset", None, "Shorthand for --config.dataset.")
    flags.DEFINE_string("ipc", None, "Shorthand for --config.ipc, e.g. 10 or 1,10,50.")
    flags.DEFINE_integer("steps", None, "Shorthand for --config.adapt.steps.")
    flags.DEFINE_string("meta_checkpoint", None,
                        "Shorthand for --config.meta_checkpoint ('' = fresh generator).")
    flags.DEFINE_string("out", None, "Shorthand for --config.out (required).")
    flags.DEFINE_integer("seed", None, "Shorthand for --config.seed.")
    flags.DEFINE_string("data_dir", None, "Shorthand for --config.data_dir.")
    flags.DEFINE_bool("overwrite", None, "Shorthand for --config.overwrite.")
    flags.DEFINE_integer("reinit_seed", None,
                         "Shorthand for --config.reinit_seed: generate every IPC from a new "
                         "initial set drawn with this seed, without re-adapting (Tab. 5).")
    flags.DEFINE_string("eval_arch", None,
                        "Shorthand for --config.eval.archs: evaluation architectures, e.g. "
                        "convnet,alexnet,vgg11,resnet18 (Tab. 4; the first is the main one).")
    flags.DEFINE_enum("objective", None, sorted(objective_lib.OBJECTIVES),
                      "Shorthand for --config.adapt.objective (Alg. 2 line 11's loss, Tab. 3).")


def config_from_flags() -> ml_collections.ConfigDict:
    """The (locked) ``--config`` with the shorthand flags set on it, in place.

    The config stays locked, so a shorthand can only set a field that exists, with its type.
    """
    return cli.apply_shorthands(flags.FLAGS.config, SHORTHANDS)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated job with its loaded data: nothing can fail on bad input after this."""

    config: ml_collections.ConfigDict
    out: str
    ipcs: tuple[int, ...]
    dataset: data.Dataset
    fit: api.FitConfig
    protocol: evaluation.EvalProtocol
    # Every architecture of --eval_arch, the first being ``protocol``'s (Tab. 4).
    protocols: dict[str, evaluation.EvalProtocol] = dataclasses.field(default_factory=dict)


def eval_archs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.eval.archs`` (``--eval_arch``) as a tuple of names in ``nets.ARCHS``."""
    text = str(config.eval.archs)
    archs = tuple(a.strip() for a in text.split(","))
    if not text.strip() or any(not a for a in archs):
        raise ValueError(f"--eval_arch={text!r} must be a comma list of architectures without "
                         f"empty items, from {nets.ARCHS}, e.g. convnet,alexnet")
    unknown = [a for a in archs if a not in nets.ARCHS]
    if unknown:
        raise ValueError(f"--eval_arch: unknown architecture(s) {unknown}; choose from "
                         f"{nets.ARCHS}")
    if len(set(archs)) != len(archs):
        raise ValueError(f"--eval_arch={text!r} names an architecture twice")
    return archs


def eval_protocol(config: ml_collections.ConfigDict, dataset: str,
                  network: str | None = None) -> evaluation.EvalProtocol:
    """``config.eval``'s protocol for ``dataset`` (flips by the per-dataset table), with the
    config's number of seeds and, if set, steps; on ``network`` (default the first of
    ``config.eval.archs``)."""
    protocol = evaluation.get_protocol(config.eval.protocol, dataset)
    changes: dict[str, Any] = {"num_seeds": config.eval.num_seeds,
                               "network": network or eval_archs(config)[0]}
    if config.eval.steps:
        changes["steps"] = config.eval.steps
    return dataclasses.replace(protocol, **changes)


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Validate everything, then load the data; raises ValueError & co. on bad input.

    Config-only checks come first (nothing is read), then the data and what depends on it.
    """
    if not config.out:
        raise ValueError("--out is required: the directory the results are written to.")
    if config.reinit_seed < -1:
        raise ValueError(f"--reinit_seed must be >= 0 (or -1: off), got {config.reinit_seed}")
    ipcs = adapt_lib.parse_ipcs(config.ipc)
    sources.resolve_source(config.dataset)  # unknown dataset names fail here
    out = outputs.check_output_dir(config.out, overwrite=config.overwrite)
    # DS (Tab. 6): a budget of k images per class holds k·f² images stored at 1/f resolution.
    f = parameterisation.check_factor(config.adapt.ds_factor)
    fit_config = api.FitConfig.from_config(config, tuple(k * f * f for k in ipcs),
                                           config.meta_checkpoint)
    protocols = {a: eval_protocol(config, config.dataset, a) for a in eval_archs(config)}
    protocol = next(iter(protocols.values()))
    ds = load_data(config)
    parameterisation.check_factor(f, ds.image_shape)
    for k in ipcs:
        data.check_per_class(ds, k * f * f, what="IPC" if f == 1 else
                             f"images per class (IPC {k} x ds_factor² {f * f})")
    return Prepared(config, out, ipcs, ds, fit_config.bind(ds), protocol, protocols)


def load_data(config: ml_collections.ConfigDict) -> data.Dataset:
    """``config.dataset`` with the per-dataset table's preprocessing, resized to
    ``config.image_size`` when set (another resolution than the native one, Tab. 9)."""
    row = settings_for(config.dataset)
    if config.image_size < 0:
        raise ValueError(f"--config.image_size must be >= 1 (or 0: the dataset's own), got "
                         f"{config.image_size}")
    size = config.image_size or row.image_size or None
    stage(f"loading {config.dataset} (ZCA={row.zca}"
          + (f", resized to {size}x{size})" if size else ")"))
    return data.load_dataset(config.dataset, data_dir=config.data_dir or None, zca=row.zca,
                             image_size=size)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Validate, then run the whole job; returns what is written to ``metrics.json``."""
    return execute(prepare(config))


def execute(prep: Prepared) -> dict[str, Any]:
    """The work itself, on a :class:`Prepared` job, written to ``--out`` all at once."""
    with outputs.atomic_dir(prep.out) as tmp:
        return _execute_into(prep, tmp)


def _execute_into(prep: Prepared, out: str) -> dict[str, Any]:
    t_job = time.perf_counter()
    config, ds, fit_config, protocol = prep.config, prep.dataset, prep.fit, prep.protocol
    key = jax.random.key(config.seed)
    outputs.write_json(os.path.join(out, "config.json"), config.to_dict())
    distiller = api.fit_dataset(ds, fit_config, key)
    k_eval = api.job_keys(key)["eval"]
    info = distiller.info
    outputs.write_json(os.path.join(out, "adapt_history.json"), info["history"])
    adapt_cfg = distiller.adapt
    checkpoint_info = {"kind": "adapted", "dataset": config.dataset, "adapt": adapt_cfg.to_dict(),
                       "started_from": info["started_from"], "seed": config.seed}
    checkpoint.save_generator(os.path.join(out, "generator"), adapt_cfg.steps,
                                  distiller.params, distiller.gen_config, checkpoint_info,
                                  max_to_keep=1)
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "ipcs": list(prep.ipcs),
        "started_from": info["started_from"],
        "adapt": {"steps": adapt_cfg.steps, "init_mode": adapt_cfg.init_mode,
                  "ipcs": list(adapt_cfg.ipcs),
                  "final_loss": info["history"][-1]["loss"] if info["history"] else None},
        "timing": dict(info["timing"]),
        "results": {},
        "eval_protocol": protocol.to_dict(),
        "eval_archs": list(prep.protocols),  # the order of --eval_arch (JSON sorts dicts)
        "device": str(jax.devices()[0]),
    }
    for ipc in prep.ipcs:
        metrics["results"][str(ipc)] = _generate_and_evaluate(
            ipc, distiller, prep, out, jax.random.fold_in(k_eval, ipc))
    metrics["timing"]["total_s"] = time.perf_counter() - t_job
    outputs.write_json(os.path.join(out, "metrics.json"), metrics)
    if len(prep.protocols) > 1 and config.eval.enabled:
        outputs.write_text(os.path.join(out, "cross_arch.md"),
                           cross_arch_markdown(metrics, tuple(prep.protocols)))
    _summary(metrics)
    return metrics


def _generate_and_evaluate(ipc: int, distiller: api.Distiller, prep: Prepared, out: str,
                           k_eval: jax.Array) -> dict[str, Any]:
    config, ds, protocol = prep.config, prep.dataset, prep.protocol
    c = ds.num_classes
    f = distiller.adapt.ds_factor
    n = ipc * f * f  # images per class: the budget ipc, f² times over under DS (Tab. 6)
    # --reinit_seed: generate from another initial set without re-adapting (Sec. 4.3, Tab. 5).
    reinit = (None if config.reinit_seed < 0
              else jax.random.fold_in(jax.random.key(config.reinit_seed), ipc))
    x_init, l_init = distiller.initial_set(n, reinit)
    adapted_on = (reinit is None and distiller.single_init is not None
                  and n == distiller.adapt.ipcs[0])
    init_source = ("adaptation's single initialisation" if adapted_on
                   else f"class-balanced draw of reinit_seed={config.reinit_seed}"
                   if reinit is not None else "fresh class-balanced draw")
    # One forward pass (+ the Eq. 3 label product), timed after a warm-up call that compiles.
    distiller.generate(n, reinit)
    t0 = time.perf_counter()
    x_gen, y_syn = distiller.generate(n, reinit)
    gen_ms = 1e3 * (time.perf_counter() - t0)
    mode = labels.resolve_label_mode(distiller.adapt.label_mode, n)
    stored = np.asarray(parameterisation.downsample(x_gen, f))  # what the budget holds
    meta = {"dataset": ds.metadata(), "generator": distiller.gen_config.to_dict(), "ipc": ipc,
            "label_mode": mode, "eval_protocol": protocol.to_dict(),
            "adapt": distiller.adapt.to_dict(), "seed": config.seed,
            "ds_factor": f, "images_per_class": n}
    x_syn = parameterisation.decode(stored, meta)  # what networks are trained on
    if f > 1:  # the random real reference under the same parameterisation and budget
        x_init_eval = np.asarray(parameterisation.roundtrip(x_init, f))
    else:
        x_init_eval = x_init
    result: dict[str, Any] = {"generation_ms": gen_ms, "label_mode": mode, "init": init_source,
                              "ds_factor": f, "images_per_class": n,
                              "mean_abs_change": float(np.mean(np.abs(x_syn - x_init)))}
    outputs.write_npz(
        os.path.join(out, f"ipc{ipc}.npz"), images=stored, labels=y_syn,
        class_ids=l_init, initial_images=x_init,
        metadata=np.asarray(json.dumps(meta, default=str)),
        **ds.preprocessing.to_arrays())
    shown = (lambda x: x) if ds.preprocessing.zca is not None else ds.preprocessing.invert
    outputs.save_before_after_png(
        os.path.join(out, f"samples_ipc{ipc}.png"), shown(x_init), shown(x_syn), l_init,
        ds.class_names, title=f"{config.dataset}, IPC {ipc}")
    if config.eval.enabled:
        stage(f"evaluating IPC {ipc} ({protocol.name} protocol, {protocol.num_seeds} seeds)")
        result["eval"] = evaluation.evaluate_synthetic(k_eval, x_syn, y_syn, ds.x_test, ds.y_test,
                                                     protocol, num_classes=c)
        if config.eval.random_baseline:
            result["random_real_baseline"] = evaluation.evaluate_synthetic(
                k_eval, x_init_eval, krr.centred_onehot(l_init, c), ds.x_test, ds.y_test,
                protocol, num_classes=c)
        if len(prep.protocols) > 1:  # Tab. 4: the same set trained on unseen architectures
            by_arch = {protocol.network: result["eval"]}
            for arch, p in list(prep.protocols.items())[1:]:
                stage(f"evaluating IPC {ipc} on {arch} ({p.num_seeds} seeds)")
                by_arch[arch] = evaluation.evaluate_synthetic(k_eval, x_syn, y_syn, ds.x_test,
                                                              ds.y_test, p, num_classes=c)
            result["eval_by_arch"] = by_arch
    return result


def cross_arch_markdown(metrics: dict[str, Any], archs: tuple[str, ...]) -> str:
    """Tab. 4-like table: test accuracy (%) of the generated set per IPC and architecture."""
    lines = [f"{metrics['dataset']}: test accuracy (%) of the generated sets, mean ± std over "
             f"{metrics['eval_protocol']['num_seeds']} networks per architecture "
             f"(adapted with {archs[0]}'s random features; the others unseen).", "",
             "| IPC | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
    for ipc, r in metrics["results"].items():
        cells = [f"{100 * r['eval_by_arch'][a]['mean']:.1f} ± "
                 f"{100 * r['eval_by_arch'][a]['std']:.1f}" for a in archs]
        lines.append(f"| {ipc} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        for arch, e in list(r.get("eval_by_arch", {}).items())[1:]:
            lines.append(f"{'':14}{arch}: test acc {100 * e['mean']:.2f} ± "
                         f"{100 * e['std']:.2f}%")
    print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():  # nothing is computed or written before this passes
        prep = prepare(config_from_flags())
    with cli.exit_on_failed_run(prep.out):
        execute(prep)


def launch(argv: list[str] | None = None) -> None:
    """Run the main job as a command: ``argv`` (default ``sys.argv``) holds its flags."""
    define_flags()
    app.run(main, argv=cli.with_config_names(list(sys.argv if argv is None else argv),
                                             DEFAULT_CONFIG))


if __name__ == "__main__":
    launch()
