"""A portable distilled set: one folder any framework can read, and its re-evaluation here.

    mgdd-jax export --run=runs/fmnist_ipc10 --ipc=10 --to=exports/fmnist_ipc10
    mgdd-jax reevaluate exports/fmnist_ipc10              # the recorded accuracy, again
    mgdd-jax reevaluate exports/fmnist_ipc10 --from_png   # from the 8-bit PNGs instead

The folder (``docs/export.md``) holds the synthetic images in pixel space (PNGs and the exact
float32 ``images.npy``), their labels (``labels.npy``, ``labels.csv``), the preprocessing to
re-apply (``protocol.json``, ``zca.npy``), the evaluation protocol with the key the run
evaluated with, the recorded accuracy, and a ``README.txt``. FRePo's sets came without their
preprocessing, and users could not reproduce its numbers (FRePo issue #12); here
:func:`reevaluate` reads nothing but the folder and the dataset's test split.

Exactness: the run trained its networks on the decoded set ``x`` (the preprocessed space).
``images.npy`` is its inverse preprocessing computed in float64 and rounded once to float32;
re-applying the preprocessing in float32 gives ``x`` back to a few ulps, and the networks are
trained with the run's protocol and key, so the accuracy is the recorded one within float
tolerance on the same machine. The PNGs add the 8-bit quantisation (at most 0.5/255 per
pixel inside [0, 1]; values outside are clipped).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mgdd_jax import augment as augment_lib
from mgdd_jax import data, labels, outputs, parameterisation
from mgdd_jax import evaluation as evaluation_lib
from mgdd_jax.data import sources, validation
from mgdd_jax.data.settings import settings_for
from mgdd_jax.evaluation import EvalProtocol
from mgdd_jax.job import job_keys
from mgdd_jax.progress import stage

EXPORT_FORMAT = "mgdd_jax.export/1"
# What a label row means, by the metadata's ``label_mode`` (MGDD Eq. 3, FRePo's targets).
LABEL_CONVENTIONS = {
    "analytic": ("soft labels of MGDD Eq. 3: kernel-ridge-regression targets solved once on a "
                 "fixed random network's features of the whole training set against its centred "
                 "one-hot labels; real-valued rows, not probabilities (they can be negative and "
                 "need not sum to 1)"),
    "onehot": "centred one-hot: onehot(class_id) - 1/C, every row sums to 0",
}
PNG_CHANNELS = (1, 3)  # grey ("L") or RGB; other channel counts get images.npy only


@dataclasses.dataclass(frozen=True, eq=False)
class ExportableSet:
    """A synthetic set with everything needed to write it out (:func:`write_set`).

    Attributes:
      images: ``(n, H, W, C)`` float32, the images networks are trained on, preprocessed
        space (decoded under the DS parameterisation).
      labels: ``(n, C)`` float32 training targets.
      class_ids: ``(n,)`` the class each image was generated for (its initial real image).
      class_names: one per class.
      preprocessing: the standardisation (and ZCA) the set lives in.
      dataset: ``{"name", "data_dir", "resize_to"}``: how the test split is loaded again.
      label_mode: ``"analytic"`` or ``"onehot"`` (:data:`LABEL_CONVENTIONS`).
      protocol: the evaluation protocol.
      eval_key: the key the set is (or was) evaluated with; seed ``i`` uses ``fold_in(key, i)``.
      ipc: the budget in images per class; ``ds_factor``: the DS factor (Tab. 6).
      recorded_accuracy: ``{"mean", "std", "per_seed"}`` measured with ``eval_key``, or None.
      source: what made it (JSON-serialisable, informational).
    """

    images: np.ndarray
    labels: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...]
    preprocessing: data.Preprocessing
    dataset: dict[str, Any]
    label_mode: str
    protocol: EvalProtocol
    eval_key: jax.Array
    ipc: int
    ds_factor: int = 1
    recorded_accuracy: dict[str, Any] | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------ reading a run
def from_run(run_dir: str, ipc: int | None = None) -> ExportableSet:
    """The set ``ipc{ipc}.npz`` of a main-job run (``--out``) and its recorded accuracy.

    ``ipc=None`` takes the run's only IPC. The evaluation key is the run's:
    ``fold_in(job_keys(key(seed))["eval"], ipc)`` (:mod:`mgdd_jax.cli.distill`).

    Raises:
      FileNotFoundError / ValueError: one line naming what is missing or wrong.
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--run={run_dir} is not a directory; pass the --out of a "
                                "main-job run (mgdd-jax distill ... --out=DIR)")
    have = sorted(int(m.group(1)) for f in os.listdir(run_dir)
                  if (m := re.fullmatch(r"ipc(\d+)\.npz", f)))
    if ipc is None:
        if len(have) != 1:
            raise ValueError(f"--ipc is required: {run_dir} holds IPCs {have or 'none'}")
        ipc = have[0]
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"--ipc must be an integer >= 1, got {ipc!r}")
    npz = os.path.join(run_dir, f"ipc{ipc}.npz")
    if not os.path.isfile(npz):
        raise FileNotFoundError(f"no ipc{ipc}.npz in {run_dir} (it holds IPCs {have or 'none'}"
                                "); pass one of those to --ipc")
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"no metrics.json in {run_dir}: the run did not finish, or "
                                "this is not a main-job --out")
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["metadata"]))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the run {run_dir}: {type(e).__name__}: {e}") from e
    result = metrics.get("results", {}).get(str(ipc))
    if result is None:
        raise ValueError(f"{metrics_path} has no result for IPC {ipc} (it has "
                         f"{sorted(metrics.get('results', {}))}); the run's files disagree")
    config = _read_json(os.path.join(run_dir, "config.json")) or {}
    name = meta["dataset"]["name"]
    size = config.get("image_size") or settings_for(name).image_size or None
    recorded = None
    if "eval" in result:
        recorded = {k: result["eval"][k] for k in ("mean", "std", "per_seed")}
    eval_key = jax.random.fold_in(job_keys(jax.random.key(int(meta["seed"])))["eval"], ipc)
    return ExportableSet(
        images=parameterisation.decode(arrays["images"], meta),
        labels=np.asarray(arrays["labels"], np.float32),
        class_ids=np.asarray(arrays["class_ids"], np.int32),
        class_names=tuple(meta["dataset"]["class_names"]),
        preprocessing=data.Preprocessing.from_arrays(arrays),
        dataset={"name": name, "data_dir": config.get("data_dir", ""), "resize_to": size},
        label_mode=meta["label_mode"],
        protocol=EvalProtocol.from_dict(meta["eval_protocol"]),
        eval_key=eval_key, ipc=int(ipc), ds_factor=int(meta.get("ds_factor", 1)),
        recorded_accuracy=recorded,
        source={"run": run_dir, "seed": meta["seed"], "generator": meta.get("generator"),
                "adapt": meta.get("adapt"), "init": result.get("init"),
                "eval_key": "fold_in(job_keys(jax.random.key(seed))['eval'], ipc)",
                "device": metrics.get("device")})


def from_distiller(distiller: Any, ipc: int, *, key: jax.Array | None = None,
                   protocol: str | EvalProtocol | None = None,
                   recorded_accuracy: Mapping[str, Any] | None = None,
                   init_key: jax.Array | None = None) -> ExportableSet:
    """The set a :class:`mgdd_jax.Distiller` generates for ``ipc`` (as the main job does).

    Args:
      key: the evaluation key (default ``jax.random.key(0)``); required with
        ``recorded_accuracy``, which must have been measured with it.
      protocol: a name (flips by the pool's dataset) or an :class:`EvalProtocol`; default the
        ``protocol`` of ``recorded_accuracy`` (an :func:`mgdd_jax.evaluate` result), else
        ``"cpu"``.
      init_key: draw a new initial set (``Distiller.generate``'s ``key``).
    """
    if recorded_accuracy is not None and key is None:
        raise ValueError("recorded_accuracy needs the key it was measured with: pass key=")
    recorded = dict(recorded_accuracy or {})
    if protocol is None:
        protocol = recorded.get("protocol", "cpu")
    if isinstance(protocol, Mapping):
        protocol = EvalProtocol.from_dict(protocol)
    elif isinstance(protocol, str):
        protocol = evaluation_lib.get_protocol(protocol, distiller.pool.name)
    f = int(distiller.adapt.ds_factor)
    n = ipc * f * f  # as the main job: the budget ipc holds ipc·f² images stored at 1/f
    if recorded_accuracy is not None:
        missing = [k for k in ("mean", "std", "per_seed") if k not in recorded]
        if missing:
            raise ValueError(f"recorded_accuracy lacks {missing}: pass an mgdd_jax.evaluate "
                             "result")
        if "protocol" in recorded and recorded["protocol"] != protocol.to_dict():
            raise ValueError("recorded_accuracy was measured with another protocol than "
                             f"{protocol.name!r}: leave protocol= out to use its own")
        if recorded.get("num_syn", n * distiller.num_classes) != n * distiller.num_classes:
            raise ValueError(f"recorded_accuracy was measured on {recorded['num_syn']} images, "
                             f"the set of IPC {ipc} has {n * distiller.num_classes}")
    _, l_init = distiller.initial_set(n, init_key)
    x_gen, y_syn = distiller.generate(n, init_key)
    stored = np.asarray(parameterisation.downsample(x_gen, f))
    name = distiller.pool.name
    return ExportableSet(
        images=parameterisation.decode(stored, {"ds_factor": f}), labels=y_syn,
        class_ids=np.asarray(l_init, np.int32), class_names=tuple(distiller.class_names),
        preprocessing=distiller.preprocessing,
        dataset={"name": name, "data_dir": "", "resize_to": None},
        label_mode=labels.resolve_label_mode(distiller.adapt.label_mode, n), protocol=protocol,
        eval_key=jax.random.key(0) if key is None else key, ipc=int(ipc), ds_factor=f,
        recorded_accuracy=(None if recorded_accuracy is None else
                           {k: recorded[k] for k in ("mean", "std", "per_seed")}),
        source={"distiller": distiller.info.get("started_from"), "adapt":
                distiller.adapt.to_dict(), "generator": distiller.gen_config.to_dict()})


def export_distiller(distiller: Any, directory: str, ipc: int, *,
                     overwrite: bool = False, **kwargs: Any) -> str:
    """:meth:`mgdd_jax.Distiller.export`: the directory checked first, then
    :func:`from_distiller` (``kwargs``) and :func:`write_set`."""
    outputs.check_output_dir(os.fspath(directory), overwrite=overwrite, flag="directory")
    return write_set(from_distiller(distiller, ipc, **kwargs), directory, overwrite=overwrite)


# ------------------------------------------------------------------------------------ writing
def export_set(run_dir: str, ipc: int | None, directory: str, *,
               overwrite: bool = False) -> str:
    """:func:`from_run` then :func:`write_set`: the run's IPC ``ipc`` as a portable folder."""
    exportable = from_run(run_dir, ipc)
    target = os.path.abspath(os.fspath(directory))
    run = exportable.source["run"]
    if os.path.commonpath([run, target]) == target:
        raise ValueError(f"--to={target} would replace the run {run} itself; choose another "
                         "directory")
    return write_set(exportable, target, overwrite=overwrite)


def write_set(s: ExportableSet, directory: str, *, overwrite: bool = False) -> str:
    """Write the folder (``docs/export.md``) all at once or not at all; returns its path.

    Raises:
      ValueError: ``directory`` holds files (without ``overwrite``) or cannot be written.
    """
    directory = outputs.check_output_dir(os.fspath(directory), overwrite=overwrite, flag="--to")
    pixels = to_pixels(s.images, s.preprocessing)
    files = _png_names(s.class_ids, s.class_names) if pixels.shape[-1] in PNG_CHANNELS else None
    with outputs.atomic_dir(directory) as tmp:
        np.save(os.path.join(tmp, "images.npy"), pixels)
        np.save(os.path.join(tmp, "labels.npy"), np.asarray(s.labels, np.float32))
        np.save(os.path.join(tmp, "class_ids.npy"), np.asarray(s.class_ids, np.int32))
        if s.preprocessing.zca is not None:
            np.save(os.path.join(tmp, "zca.npy"), s.preprocessing.zca)
        if files is not None:
            for name, q in zip(files, quantise(pixels)):
                _write_png(os.path.join(tmp, name), q)
        _write_csv(os.path.join(tmp, "labels.csv"), files, s)
        protocol = describe(s, pixels.shape, png=files is not None)
        outputs.write_json(os.path.join(tmp, "protocol.json"), protocol)
        outputs.write_text(os.path.join(tmp, "README.txt"), readme(protocol))
    return directory


def to_pixels(x: np.ndarray, preprocessing: data.Preprocessing) -> np.ndarray:
    """Preprocessed images -> float32 pixel space ([0, 1] scale), unclipped.

    The inverse of ``preprocessing.apply`` in float64 (ZCA by a float64 inverse of the float32
    matrix), rounded to float32 once, so that re-applying it gives ``x`` back to a few ulps.
    """
    x64 = np.asarray(x, np.float64)
    if preprocessing.zca is not None:
        inverse = np.linalg.inv(preprocessing.zca.astype(np.float64))
        x64 = (x64.reshape(x64.shape[0], -1) @ inverse).reshape(x64.shape)
    mean = preprocessing.mean.astype(np.float64)
    std = preprocessing.std.astype(np.float64)
    return (x64 * std + mean).astype(np.float32)


def quantise(pixels: np.ndarray) -> np.ndarray:
    """Pixel-space floats -> uint8 (clipped to [0, 1], rounded to the nearest of 0..255)."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def describe(s: ExportableSet, images_shape: Sequence[int], *, png: bool) -> dict[str, Any]:
    """The ``protocol.json`` of a set (everything but the arrays)."""
    import mgdd_jax

    n, c = s.labels.shape
    p = s.protocol
    steps = p.steps_for(n)
    ops = augment_lib.parse_strategy(p.augment)
    pre = s.preprocessing
    key_data = np.asarray(jax.random.key_data(s.eval_key))
    return {
        "format": EXPORT_FORMAT, "written_by": f"mgdd_jax {mgdd_jax.__version__}",
        "dataset": {**s.dataset, "num_classes": c, "class_names": list(s.class_names)},
        "image_shape": [int(v) for v in images_shape[1:]], "num_images": int(n),
        "ipc": s.ipc, "ds_factor": s.ds_factor,
        "ds_note": ("ds_factor > 1: the budget holds ipc·ds_factor² images stored at "
                    "1/ds_factor resolution; the exported images are their bilinear "
                    "up-sampling, the images networks are trained on") if s.ds_factor > 1
        else "full resolution",
        "images": {"npy": "images.npy", "png": "images/" if png else None, "layout": "NHWC",
                   "scale": "pixel space, [0, 1] scale; images.npy float32 unclipped, PNGs "
                            "clipped to [0, 1] and 8-bit",
                   "order": "the rows of labels.npy and labels.csv"},
        "labels": {"npy": "labels.npy", "csv": "labels.csv", "class_ids": "class_ids.npy",
                   "mode": s.label_mode, "convention": LABEL_CONVENTIONS[s.label_mode],
                   "use": "regression targets, MSE (0.5 * sum over classes, mean over the "
                          "batch) as the protocol trains; argmax for a hard label"},
        "preprocessing": {
            "order": "x01 -> (x01 - mean) / std per channel -> if zca: flatten each NHWC image "
                     "row-major to d = H*W*C values and multiply x_flat @ zca",
            "mean": [float(v) for v in pre.mean], "std": [float(v) for v in pre.std],
            "zca": (None if pre.zca is None else
                    {"file": "zca.npy", "dim": int(pre.zca.shape[0]), "reg": pre.zca_reg}),
            "zca_reg": pre.zca_reg},
        "eval_protocol": {
            "network": p.network, "width": p.width, "depth": p.depth, "norm": p.norm,
            "double_width": p.double_width, "steps": steps, "batch_size": p.batch_for(n),
            "optimizer": ("adam" if p.weight_decay == 0 else
                          "adamw (decoupled weight decay on kernels, ndim > 1, only)"),
            "schedule": {"kind": "optax.warmup_cosine_decay_schedule", "init_value": 0.0,
                         "peak_value": p.learning_rate, "warmup_steps": p.warmup_for(steps),
                         "decay_steps": steps,
                         "end_value": p.learning_rate * p.final_lr_fraction},
            "weight_decay": p.weight_decay, "augment": p.augment, "augment_ops": list(ops),
            "flips": "flip" in ops, "num_seeds": p.num_seeds,
            "loss": "MSE on the labels: 0.5 * sum over classes, mean over the batch",
            "batches": "a fresh random subset of batch_size images every step",
            "test": "final weights, the dataset's full test split",
            "protocol": p.to_dict()},
        "eval_key": {"impl": str(jax.random.key_impl(s.eval_key)),
                     "data": [int(v) for v in key_data.ravel()],
                     "shape": list(key_data.shape),
                     "seeds": "network i < num_seeds trains with jax.random.fold_in(key, i); "
                              "key = jax.random.wrap_key_data(data, impl=impl)"},
        "recorded_accuracy": s.recorded_accuracy,
        "source": s.source,
    }


def readme(protocol: Mapping[str, Any]) -> str:
    """The folder's ``README.txt``: what it is and how to load it elsewhere."""
    ds, pre, ev = protocol["dataset"], protocol["preprocessing"], protocol["eval_protocol"]
    rec = protocol["recorded_accuracy"]
    zca = ("then ZCA: flatten each image (NHWC, row-major, d = H*W*C) and multiply by "
           f"zca.npy (x_flat @ zca, d = {pre['zca']['dim']})" if pre["zca"] else "no ZCA")
    acc = (f"{100 * rec['mean']:.2f} +- {100 * rec['std']:.2f}% over {len(rec['per_seed'])} "
           "networks" if rec else "none recorded")
    labels_text = textwrap.fill(
        f"Labels ({protocol['labels']['mode']}): {protocol['labels']['convention']}. Train on "
        "them as regression targets with MSE, as the protocol does; argmax gives a hard label.",
        92)
    png = ("images/CLASS/NNNN.png: the same images, clipped to [0, 1], 8-bit "
           "(labels.csv names each file)" if protocol["images"]["png"] else
           "(no PNGs: the images have neither 1 nor 3 channels)")
    return f"""\
A distilled set of {ds['name']} ({protocol['num_images']} images, {protocol['ipc']} per class
in the storage budget, {ds['num_classes']} classes, image shape {protocol['image_shape']} HWC),
written by {protocol['written_by']} (mgdd-jax export). Format {protocol['format']}.

Files
  images.npy    float32 (n, H, W, C), pixel space in [0, 1] scale, unclipped: the exact set
  {png}
  labels.npy    float32 (n, C) training targets, in the order of images.npy
  labels.csv    file,class_id,class_name,label_0..label_{{C-1}}: the same rows as text
  class_ids.npy int32 (n,): the class each image was generated for
  protocol.json the preprocessing, the evaluation protocol and key, the recorded accuracy
{'  zca.npy       float32 (d, d) ZCA matrix' + chr(10) if pre['zca'] else ''}
{labels_text}

Loading it from another framework (PyTorch, NumPy, ...)
  1. x = np.load("images.npy")  (or each PNG as uint8 / 255.0), float32 NHWC
  2. x = (x - mean) / std per channel, mean = {pre['mean']}, std = {pre['std']}
  3. {zca}
  4. y = np.load("labels.npy"); test images get steps 1-3 too, from their [0, 1] pixels
  For PyTorch transpose to NCHW after step 3: torch.from_numpy(x).permute(0, 3, 1, 2).

Evaluation protocol: {ev['network']} width {ev['width']} depth {ev['depth']} norm {ev['norm']},
{ev['steps']} steps of {ev['optimizer']}, peak learning rate {ev['schedule']['peak_value']}
(linear warm-up over {ev['schedule']['warmup_steps']} steps, cosine decay to
{ev['schedule']['end_value']:.3g}), batch {ev['batch_size']}, weight decay {ev['weight_decay']},
augmentation {ev['augment']} (flips: {ev['flips']}), {ev['num_seeds']} networks.
Recorded accuracy: {acc}.

Re-evaluating it with mgdd-jax (same networks, same key):
  mgdd-jax reevaluate THIS_FOLDER            (from images.npy: the recorded accuracy)
  mgdd-jax reevaluate THIS_FOLDER --from_png (from the 8-bit PNGs)
"""


def _png_names(class_ids: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """``images/{class folder}/{i:04d}.png`` per image, ``i`` counting within its class.

    The folder is the class name when every name is a safe, distinct (also ignoring case)
    file name; otherwise every folder is ``{class_id}_{safe name}``.
    """
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", str(c)).strip("._") for c in class_names]
    plain = (all(s == str(c) and s for s, c in zip(safe, class_names))
             and len({s.casefold() for s in safe}) == len(safe))
    width = len(str(len(class_names) - 1))
    folders = safe if plain else [f"{j:0{width}d}_{s}".rstrip("_")
                                  for j, s in enumerate(safe)]
    counts: dict[int, int] = {}
    names = []
    for cid in np.asarray(class_ids).tolist():
        i = counts.get(cid, 0)
        counts[cid] = i + 1
        names.append(f"images/{folders[cid]}/{i:04d}.png")
    return names


def _write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")


def _write_csv(path: str, files: list[str] | None, s: ExportableSet) -> None:
    """``labels.csv``: shortest float32 text of each label, so it parses back exactly."""
    n, c = s.labels.shape
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_id", "class_name", *(f"label_{j}" for j in range(c))])
        for i in range(n):
            cid = int(s.class_ids[i])
            w.writerow([files[i] if files else "", cid, s.class_names[cid],
                        *(str(v) for v in np.asarray(s.labels[i], np.float32))])


# ------------------------------------------------------------------------------- reading back
def read_protocol(directory: str) -> dict[str, Any]:
    """An exported folder's ``protocol.json``; one-line errors for anything else."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory; pass a folder written by "
                                "mgdd-jax export")
    protocol = _read_json(os.path.join(directory, "protocol.json"))
    if protocol is None:
        raise FileNotFoundError(f"no protocol.json in {directory}: not a folder written by "
                                "mgdd-jax export")
    if protocol.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{directory} holds format {protocol.get('format')!r}, expected "
                         f"{EXPORT_FORMAT!r}")
    return protocol


def read_preprocessing(directory: str, protocol: Mapping[str, Any]) -> data.Preprocessing:
    pre = protocol["preprocessing"]
    zca = np.load(os.path.join(directory, pre["zca"]["file"])) if pre["zca"] else None
    return data.Preprocessing(mean=np.asarray(pre["mean"], np.float32),
                              std=np.asarray(pre["std"], np.float32), zca=zca,
                              zca_reg=pre["zca_reg"])


def read_pngs(directory: str) -> np.ndarray:
    """The PNGs in the order of ``labels.csv``, as float32 [0, 1] NHWC."""
    from PIL import Image

    with open(os.path.join(directory, "labels.csv"), newline="", encoding="utf-8") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    if not files or not all(files):
        raise ValueError(f"{directory} has no PNGs (labels.csv names no files); re-evaluate "
                         "from images.npy")
    images = []
    for name in files:
        with Image.open(os.path.join(directory, name)) as im:
            images.append(np.asarray(im))
    return validation.images_to_unit(np.stack(images), "the exported PNGs")


def eval_key(protocol: Mapping[str, Any]) -> jax.Array:
    """The evaluation key of ``protocol.json``, rebuilt from its raw key data."""
    k = protocol["eval_key"]
    raw = np.asarray(k["data"], np.uint32).reshape(k["shape"])
    return jax.random.wrap_key_data(raw, impl=k["impl"])


def reevaluate(directory: str, *, from_png: bool = False, data_dir: str | None = None,
               test: tuple[Any, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the protocol's networks on an exported set with its key; compare with the record.

    Reads only the folder and the test split: loaded by the dataset name and preprocessing of
    ``protocol.json`` through :func:`mgdd_jax.data.load_dataset` (as the main job does), or
    ``test=(x_test, y_test)`` raw images (uint8 or [0, 1] floats) and class ids.

    Args:
      from_png: train on the 8-bit PNGs instead of ``images.npy``.
      data_dir: where the dataset's files are (default the run's ``data_dir``).

    Returns:
      ``{"accuracy": evaluate_synthetic's result, "recorded": the recorded mean/std/per_seed
      or None, "difference": mean - recorded mean (or None), "from": "images.npy"|"png",
      "png_error": max |png - npy| over pixels inside [0, 1] (with ``from_png``),
      "png_error_all": the same over every pixel (clipping included), "test": how the test
      split was preprocessed}``.
    """
    protocol = read_protocol(directory)
    pre = read_preprocessing(directory, protocol)
    exact = np.load(os.path.join(directory, "images.npy"))
    y_syn = np.load(os.path.join(directory, "labels.npy"))
    out: dict[str, Any] = {"from": "png" if from_png else "images.npy"}
    pixels = exact
    if from_png:
        pixels = read_pngs(directory)
        err = np.abs(pixels.astype(np.float64) - exact)
        inside = (exact >= 0) & (exact <= 1)
        out["png_error"] = float(err[inside].max()) if inside.any() else 0.0
        out["png_error_all"] = float(err.max())
        out["clipped_fraction"] = float(1 - inside.mean())
    x_test, y_test, out["test"] = _test_split(protocol, pre, data_dir, test)
    num_classes = protocol["dataset"]["num_classes"]
    p = EvalProtocol.from_dict(protocol["eval_protocol"]["protocol"])
    if progress:
        stage(f"re-evaluating {directory} from {out['from']} ({p.name} protocol, "
              f"{p.num_seeds} seeds)")
    out["accuracy"] = evaluation_lib.evaluate_synthetic(
        eval_key(protocol), pre.apply(pixels), y_syn, x_test, y_test, p,
        num_classes=num_classes, progress=progress)
    recorded = protocol.get("recorded_accuracy")
    out["recorded"] = recorded
    out["difference"] = None if recorded is None else out["accuracy"]["mean"] - recorded["mean"]
    return out


def _test_split(protocol: Mapping[str, Any], pre: data.Preprocessing, data_dir: str | None,
                test: tuple[Any, Any] | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The test split in the set's preprocessed space, and how it was made."""
    ds_info = protocol["dataset"]
    shape = tuple(protocol["image_shape"])
    if test is not None:
        x = validation.images_to_unit(np.asarray(test[0]), "test images")
        y = validation.check_labels(np.asarray(test[1]), ds_info["num_classes"], "test labels")
        if x.shape[1:] != shape:
            raise ValueError(f"test images have shape {x.shape[1:]}, the set {shape}")
        return pre.apply(x), y, "given arrays, the exported preprocessing"
    name = ds_info["name"]
    try:
        sources.resolve_source(name)
    except ValueError as e:
        raise ValueError(f"the set's dataset {name!r} cannot be loaded by name ({e}); pass the "
                         "test split: reevaluate(directory, test=(x_test, y_test))") from e
    ds = data.load_dataset(name, data_dir=data_dir or ds_info.get("data_dir") or None,
                           zca=pre.zca is not None, zca_reg=pre.zca_reg,
                           image_size=ds_info.get("resize_to") or None)
    if ds.image_shape != shape:
        raise ValueError(f"{name} loads with image shape {ds.image_shape}, the set has {shape}")
    same = all(np.array_equal(a, b) for a, b in zip(
        ds.preprocessing.to_arrays().values(), pre.to_arrays().values()))
    if same:
        return ds.x_test, ds.y_test, "loaded as the run did (identical preprocessing)"
    # Another machine or other files: map the test split with the set's own preprocessing.
    return (pre.apply(ds.preprocessing.invert(ds.x_test)), ds.y_test,
            "loaded, re-mapped with the exported preprocessing (the refitted one differs)")


def summary(result: Mapping[str, Any]) -> str:
    """One or two lines: the accuracy, the recorded one, the PNG error."""
    a, r = result["accuracy"], result["recorded"]
    seeds = ", ".join(f"{100 * v:.2f}" for v in a["per_seed"])
    line = (f"from {result['from']}: test acc {100 * a['mean']:.2f} ± {100 * a['std']:.2f}% "
            f"(per seed {seeds})")
    if r is not None:
        line += (f"; recorded {100 * r['mean']:.2f} ± {100 * r['std']:.2f}% "
                 f"(difference {100 * result['difference']:+.4f} points)")
    else:
        line += "; no recorded accuracy"
    if "png_error" in result:
        line += (f"\n  max |png - npy| = {result['png_error']:.3g} inside [0, 1] "
                 f"(bound 0.5/255 = {0.5 / 255:.3g}), {result['png_error_all']:.3g} with "
                 f"clipping ({100 * result['clipped_fraction']:.2f}% of pixels outside [0, 1])")
    return line


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
