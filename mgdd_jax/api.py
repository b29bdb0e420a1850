"""Array in, distilled set out: MGDD as a few calls inside your own JAX code.

    import jax, mgdd_jax
    d = mgdd_jax.fit(x_train, y_train, ipc=10, key=jax.random.key(0))   # Eq. 3 + Alg. 2
    x_syn, y_syn = d.generate(10)                    # the set adapted on
    x_50, y_50 = d.generate(50)                      # any other IPC: one forward pass (Sec. 4.3)
    x_new, _ = d.generate(10, key=jax.random.key(1)) # another initialisation (Tab. 5, privacy)
    d.save("runs/my_distiller"); d = mgdd_jax.load("runs/my_distiller")
    res = mgdd_jax.evaluate(x_syn, y_syn, d.preprocess(x_test), y_test, key=jax.random.key(2))

:func:`fit` takes NumPy or JAX arrays, ``(N, H, W, C)`` or ``(N, H, W)`` grey, uint8 (0..255)
or float in [0, 1], and refuses anything else with the same messages as the dataset loaders
(it goes through the same validation, :func:`mgdd_jax.data.load.dataset_from_raw`). Its
defaults are ``mgdd_jax/configs/distill.py``'s ``cpu`` variant (the one source of every
default); pass ``config=default_config("paper")`` (or a modified copy) for other sizes.

Nothing touches the disk unless asked (:meth:`Distiller.save`). The main job's launcher is a
thin caller of :func:`fit_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import chex
import jax
import ml_collections
import numpy as np

import mgdd_jax
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import checkpoint, data, labels, nets, outputs
from mgdd_jax import evaluation as evaluate_lib
from mgdd_jax import generator as gen_lib
from mgdd_jax.data import load as load_lib
from mgdd_jax.data import validation
from mgdd_jax.data.dataset import RawData
from mgdd_jax.job import FitConfig, job_keys
from mgdd_jax.progress import stage

DISTILLER_FORMAT = "mgdd_jax.distiller/1"
# ``meta=`` values of :func:`fit` that are not checkpoint paths.
META_FROM_CONFIG = "default"  # the config's meta_checkpoint (fresh for the built-in configs)
META_FRESH = "fresh"  # a fresh generator: exactly the identity at step 0
# Real images per class kept by :meth:`Distiller.save` to draw new initialisations from.
SAVED_POOL_PER_CLASS = 50


def default_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The distill config (``mgdd_jax/configs/distill.py``), e.g. ``"paper"`` or
    ``"size=paper,eval=cpu"``; unlocked, so fields can be changed before :func:`fit`."""
    from mgdd_jax.configs import distill as distill_config  # it imports mgdd_jax.krr

    return distill_config.get_config(variant)


@dataclasses.dataclass(eq=False)
class Distiller:
    """An adapted generator and everything needed to generate sets from it (Sec. 4.3).

    Made by :func:`fit` / :func:`fit_dataset` or :func:`load`. Images in and out are in the
    preprocessed space the generator works in (:meth:`preprocess` maps raw images there,
    ``preprocessing.invert`` back).

    Attributes:
      params: the adapted generator parameters ω'.
      gen_config: the generator architecture.
      label_model: Eq. 3's fixed θ and ``W_t``.
      adapt: the Alg. 2 settings it was adapted with (``adapt.ipcs``: the IPCs adapted on).
      num_classes, class_names: the classes.
      preprocessing: the standardisation (and ZCA) fitted on the training images.
      pool: the real images initial sets are drawn from (the training set after :func:`fit`;
        ``SAVED_POOL_PER_CLASS`` per class after :func:`load`).
      keys: ``{"labels", "init"}``: θ's key and the key default initial sets are drawn with.
      single_init: the fixed initial set of single-initialisation adaptation, else None.
      info: how it was made (start, timings, loss history); JSON-serialisable.
    """

    params: Any
    gen_config: gen_lib.GeneratorConfig
    label_model: labels.LabelModel
    adapt: adapt_lib.AdaptConfig
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: data.Preprocessing
    pool: data.Dataset
    keys: dict[str, jax.Array]
    single_init: tuple[np.ndarray, np.ndarray] | None
    info: dict[str, Any]
    _inits: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.pool.image_shape

    def initial_set(self, ipc: int, key: chex.PRNGKey | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Real images ``(ipc * C, H, W, C)`` and their int labels to generate from (Alg. 2 l. 8).

        Without ``key`` the IPC's default set: the one adapted on (single initialisation), or
        a class-balanced draw from ``fold_in(keys["init"], ipc)``, remembered (and saved) so
        that the same IPC always gives the same set. With ``key``: a new draw from the pool.
        """
        ipc = _check_ipc(ipc)
        if key is not None:
            return data.sample_initial_set(key, self.pool, ipc)
        if ipc not in self._inits:
            if (self.single_init is not None and self.adapt.init_mode == "single"
                    and ipc == self.adapt.ipcs[0]):
                self._inits[ipc] = self.single_init
            else:
                self._inits[ipc] = data.sample_initial_set(
                    jax.random.fold_in(self.keys["init"], ipc), self.pool, ipc)
        return self._inits[ipc]

    def preprocess(self, x: Any) -> np.ndarray:
        """Raw images (uint8 or float in [0, 1], NHWC or NHW) -> the generator's space."""
        x01 = validation.images_to_unit(_to_numpy(x), "images")
        return self.preprocessing.apply(x01)

    def labels_for(self, x_init: Any, l_init: Any, ipc: int) -> np.ndarray:
        """Synthetic labels of an initial set: Eq. 3 or centred one-hot (``adapt.label_mode``)."""
        return np.asarray(labels.initial_labels(
            self.label_model, x_init, l_init, self.num_classes, self.adapt.feature,
            self.adapt.label_mode, ipc))

    def generate(self, ipc: int, key: chex.PRNGKey | None = None,
                 init: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A synthetic set of ``ipc`` images per class by one forward pass (Sec. 4.3, Fig. 3).

        Args:
          ipc: images per class (any, not only those adapted on: the size embedding).
          key: draw a new initial set from the pool with this key (multi-init privacy use,
            Tab. 5); default :meth:`initial_set`'s.
          init: ``(images, labels)`` of your own initial set instead: raw images as
            :func:`fit` takes them and int labels, ``ipc`` per class.

        Returns:
          ``(x_syn, y_syn)``: float32 ``(ipc * C, H, W, C)`` images (preprocessed space) and
          float32 ``(ipc * C, C)`` labels.
        """
        ipc = _check_ipc(ipc)
        if init is not None:
            if key is not None:
                raise ValueError("give either key (draw a new initial set) or init, not both")
            x_init, l_init = self._check_init(init, ipc)
        else:
            x_init, l_init = self.initial_set(ipc, key)
        x_syn = np.asarray(gen_lib.generate(self.params, x_init, ipc, self.gen_config))
        y_syn = self.labels_for(x_init, l_init, ipc)
        if not (np.all(np.isfinite(x_syn)) and np.all(np.isfinite(y_syn))):
            raise FloatingPointError(f"IPC {ipc}: the generated set has non-finite values")
        return x_syn, y_syn

    def _check_init(self, init: tuple[Any, Any], ipc: int) -> tuple[np.ndarray, np.ndarray]:
        if not (isinstance(init, (tuple, list)) and len(init) == 2):
            raise ValueError("init must be a pair (images, int labels)")
        x = self.preprocess(init[0])
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"init images have shape (H, W, C) = {x.shape[1:]} but the "
                             f"distiller was fitted on {self.image_shape}")
        validation.check_split_arrays(x, _to_numpy(init[1]), "init")
        y = validation.check_labels(_to_numpy(init[1]), self.num_classes, "init labels")
        counts = np.bincount(y, minlength=self.num_classes)
        if np.any(counts != ipc):
            raise ValueError(f"init must hold exactly ipc={ipc} images of each of the "
                             f"{self.num_classes} classes; it holds {counts.tolist()}")
        return x, y

    def save(self, path: str, *, overwrite: bool = False) -> str:
        """Write the distiller to the directory ``path``, all at once or not at all.

        Holds the generator (an orbax checkpoint, ``path/generator``, also usable as
        a ``meta`` checkpoint of :func:`fit` and the main job's ``--meta_checkpoint``), the label model, the preprocessing, the
        configs, every default initial set made so far, and up to ``SAVED_POOL_PER_CLASS``
        real images per class to draw new initialisations from. :func:`load` reads it back;
        ``generate`` then gives bit-identical sets for those initial sets.
        """
        path = outputs.check_output_dir(path, overwrite=overwrite, flag="path")
        for ipc in self.adapt.ipcs:
            self.initial_set(ipc)  # the sets adapted on are always saved
        pool_idx = _pool_subset(self.pool.y_train, self.num_classes, SAVED_POOL_PER_CLASS)
        arrays: dict[str, np.ndarray] = {
            "label_weights": np.asarray(self.label_model.weights),
            "pool_images": self.pool.x_train[pool_idx],
            "pool_labels": self.pool.y_train[pool_idx],
            **{f"key_{k}": np.asarray(jax.random.key_data(v)) for k, v in self.keys.items()},
            **self.preprocessing.to_arrays(),
        }
        for ipc, (x, y) in self._inits.items():
            arrays[f"init{ipc}_images"], arrays[f"init{ipc}_labels"] = x, y
        meta = {"format": DISTILLER_FORMAT, "version": mgdd_jax.__version__,
                "gen_config": self.gen_config.to_dict(), "adapt": self.adapt.to_dict(),
                "num_classes": self.num_classes, "class_names": list(self.class_names),
                "image_shape": list(self.image_shape), "pool_name": self.pool.name,
                "label_num_train": self.label_model.num_train,
                "single_init_ipc": (self.adapt.ipcs[0] if self.single_init is not None
                                    else None),
                "inits": sorted(self._inits), "info": self.info}
        with outputs.atomic_dir(path) as tmp:
            checkpoint.save_generator(os.path.join(tmp, "generator"), self.adapt.steps,
                                      self.params, self.gen_config,
                                      {"kind": "adapted", **_json_safe(self.info)},
                                      max_to_keep=1)
            outputs.write_npz(os.path.join(tmp, "distiller.npz"), **arrays)
            outputs.write_json(os.path.join(tmp, "distiller.json"), meta)
        return path

    def export(self, directory: str, ipc: int, *, key: chex.PRNGKey | None = None,
               protocol: str | evaluate_lib.EvalProtocol | None = None,
               recorded_accuracy: dict[str, Any] | None = None,
               init_key: chex.PRNGKey | None = None, overwrite: bool = False) -> str:
        """Write the set of ``ipc`` images per class as a portable folder (docs/export.md).

        The folder of ``mgdd-jax export`` (:func:`mgdd_jax.export.write_set`): PNGs, the exact
        float32 pixels, labels, preprocessing, evaluation protocol and key. ``key`` is the
        evaluation key recorded for re-evaluation (default ``jax.random.key(0)``);
        ``recorded_accuracy``, an :func:`evaluate` result measured with ``key`` on this set,
        is stored with it (and its protocol used unless ``protocol`` is given; default
        ``"cpu"``). ``init_key`` draws a new initial set, as in :meth:`generate`.
        """
        from mgdd_jax import export as export_lib

        return export_lib.export_distiller(self, directory, _check_ipc(ipc), key=key,
                                           protocol=protocol,
                                           recorded_accuracy=recorded_accuracy,
                                           init_key=init_key, overwrite=overwrite)


def load(path: str) -> Distiller:
    """Read a :meth:`Distiller.save` directory back."""
    meta_path = os.path.join(path, "distiller.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no saved distiller at {path!r} (no distiller.json); pass a "
                                "directory written by Distiller.save")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != DISTILLER_FORMAT:
        raise ValueError(f"{path!r} holds format {meta.get('format')!r}, expected "
                         f"{DISTILLER_FORMAT!r}; save it again with this version")
    z = dict(np.load(os.path.join(path, "distiller.npz")))
    gen_config = gen_lib.GeneratorConfig.from_dict(meta["gen_config"])
    # Saved before objectives and the DS parameterisation existed: Eq. 1, full resolution.
    a = {"objective": "krr", "ds_factor": 1, **meta["adapt"]}
    adapt_cfg = adapt_lib.AdaptConfig(**{**a, "feature": nets.ConvNetConfig(**a["feature"])})
    image_shape = tuple(meta["image_shape"])
    params, _ = checkpoint.load_generator(os.path.join(path, "generator"), gen_config,
                                          image_shape)
    keys = {k[len("key_"):]: jax.random.wrap_key_data(v) for k, v in z.items()
            if k.startswith("key_")}
    theta = nets.init_feature_params(keys["labels"], image_shape, adapt_cfg.feature)
    label_model = labels.LabelModel(theta=theta, weights=jax.numpy.asarray(z["label_weights"]),
                                    num_train=int(meta["label_num_train"]))
    preprocessing = data.Preprocessing.from_arrays(z)
    pool = _pool_dataset(meta["pool_name"], z["pool_images"], z["pool_labels"],
                         meta["num_classes"], meta["class_names"], preprocessing)
    inits = {int(k): (z[f"init{k}_images"], z[f"init{k}_labels"]) for k in meta["inits"]}
    single = meta["single_init_ipc"]
    return Distiller(params=params, gen_config=gen_config, label_model=label_model,
                     adapt=adapt_cfg, num_classes=int(meta["num_classes"]),
                     class_names=tuple(meta["class_names"]), preprocessing=preprocessing,
                     pool=pool, keys=keys,
                     single_init=inits.get(single) if single is not None else None,
                     info=meta["info"], _inits=inits)


def arrays_dataset(x_train: Any, y_train: Any, *, num_classes: int | None = None,
                   class_names: tuple[str, ...] | None = None, zca: bool = False,
                   name: str = "arrays") -> data.Dataset:
    """In-memory arrays -> a validated, preprocessed :class:`~mgdd_jax.data.Dataset`.

    The same validation and preprocessing as the named loaders (``dataset_from_raw``).
    ``num_classes`` defaults to ``len(class_names)`` or ``max(y_train) + 1``. There is no test
    split here; the first training image stands in for it (nothing reads it).
    """
    x, y = _to_numpy(x_train), _to_numpy(y_train)
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            validation.check_split_arrays(x, y, f"train split of dataset {name!r}")
            yi = validation.check_labels(y, np.iinfo(np.int32).max, "y_train")
            num_classes = int(yi.max()) + 1
    if class_names is None:
        class_names = tuple(str(c) for c in range(num_classes))
    raw = RawData(x_train=x, y_train=y, x_test=x[:1], y_test=y[:1], num_classes=num_classes,
                  class_names=tuple(class_names))
    return load_lib.dataset_from_raw(name, raw, zca=zca)


def fit(
    x_train: Any,
    y_train: Any,
    *,
    ipc: int | str | tuple[int, ...],
    key: chex.PRNGKey,
    config: ml_collections.ConfigDict | None = None,
    meta: str = META_FROM_CONFIG,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    zca: bool = False,
    progress: bool = False,
) -> Distiller:
    """Distil ``(x_train, y_train)``: the Eq. 3 label model, then Alg. 2 from a generator.

    Args:
      x_train: ``(N, H, W, C)`` or ``(N, H, W)`` images, NumPy or JAX, uint8 or float in [0, 1].
      y_train: ``(N,)`` int class ids in ``[0, num_classes)``.
      ipc: images per class adapted on: one (single initialisation) or several, e.g.
        ``(1, 10, 50)`` or ``"1,10,50"`` (multi-initialisation); any IPC can be generated
        afterwards.
      key: PRNG key of the whole job.
      config: a distill config (:func:`default_config`); default the ``cpu`` variant.
      meta: ``"default"`` (the config's ``meta_checkpoint``: the fresh generator for the
        built-in configs), ``"fresh"``, or a checkpoint directory (e.g.
        ``configs.distill.SHIPPED_META_CHECKPOINT``, the v2 meta generator).
      num_classes, class_names: the classes (default: from the labels).
      zca: ZCA-whiten after standardising (as for the RGB benchmarks).
      progress: print stage lines and a progress line.

    Returns:
      A :class:`Distiller`.

    Raises:
      ValueError: on any bad input, before any work.
    """
    config = default_config() if config is None else config
    ipcs = adapt_lib.parse_ipcs(ipc)
    checkpoint_dir = _meta_checkpoint(meta, config)
    fit_config = FitConfig.from_config(config, ipcs, checkpoint_dir)
    ds = arrays_dataset(x_train, y_train, num_classes=num_classes, class_names=class_names,
                        zca=zca)
    return fit_dataset(ds, fit_config.bind(ds), key, progress=progress)


def fit_dataset(ds: data.Dataset, fit_config: FitConfig, key: chex.PRNGKey, *,
                progress: bool = True) -> Distiller:
    """:func:`fit` on a loaded :class:`~mgdd_jax.data.Dataset` (``fit_config`` bound to it).

    Alg. 2 lines 1-4 (the Eq. 3 label model, on every training image), then lines 5-12 (adapt
    the generator from ``fit_config.meta_checkpoint`` or a fresh one).
    """
    keys = job_keys(key)
    cfg = fit_config
    say = stage if progress else (lambda message: None)
    t0 = time.perf_counter()
    label_model = labels.fit_label_model(
        keys["labels"], ds.x_train, ds.y_train, ds.num_classes, cfg.adapt.feature,
        reg=cfg.label_reg, chunk_size=cfg.label_chunk_size)
    jax.block_until_ready(label_model.weights)
    t_labels = time.perf_counter() - t0
    say(f"label model (Eq. 3) solved on {ds.x_train.shape[0]} images in {t_labels:.1f}s")
    if cfg.meta_checkpoint:
        params, stored = checkpoint.load_generator(cfg.meta_checkpoint, cfg.gen_config,
                                                   ds.image_shape, key=keys["generator"])
        start = f"{stored['info'].get('kind', 'checkpoint')} generator {cfg.meta_checkpoint}"
    else:
        params = gen_lib.init_generator(keys["generator"], ds.image_shape, cfg.gen_config)
        start = "fresh generator (identity at init)"
    say(f"adapting from {start} for {cfg.adapt.steps} steps")
    result = adapt_lib.adapt(keys["adapt"], params, ds, label_model, cfg.gen_config, cfg.adapt,
                             progress=progress)
    info = {"dataset": ds.name, "started_from": cfg.meta_checkpoint or "fresh",
            "history": result.history,
            "timing": {"label_solve_s": t_labels, "adaptation_s": result.seconds,
                       "adaptation_s_per_step": result.seconds_per_step}}
    return Distiller(params=result.params, gen_config=cfg.gen_config, label_model=label_model,
                     adapt=cfg.adapt, num_classes=ds.num_classes, class_names=ds.class_names,
                     preprocessing=ds.preprocessing, pool=ds,
                     keys={"labels": keys["labels"], "init": keys["init"]},
                     single_init=result.single_init, info=info)


def evaluate(x_syn: Any, y_syn: Any, x_test: Any, y_test: Any, *, key: chex.PRNGKey,
             protocol: str | evaluate_lib.EvalProtocol = "cpu", num_seeds: int | None = None,
             steps: int | None = None, dataset: str | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Train fresh networks on a synthetic set and test them (FRePo's protocol, or ``"cpu"``).

    ``x_test`` must be in the synthetic set's (preprocessed) space: pass
    ``distiller.preprocess(raw_test_images)``. ``num_seeds`` and ``steps`` override the
    protocol's. ``dataset``, the loader name of the data (e.g. ``"fashion_mnist"``), drops the
    horizontal flips of a named protocol where the per-dataset table says so (digits,
    characters: :data:`mgdd_jax.data.settings.DATASET_SETTINGS`); without it a named protocol
    keeps its flips. The result records its protocol (``result["protocol"]``) next to
    ``mean``, ``std`` and ``per_seed`` accuracies.
    """
    if isinstance(protocol, str):
        protocol = evaluate_lib.get_protocol(protocol, dataset)
    elif dataset is not None:
        raise ValueError("dataset= applies to a protocol given by name; an EvalProtocol "
                         "object is used as given (set its augment= yourself)")
    changes = {k: int(v) for k, v in (("num_seeds", num_seeds), ("steps", steps)) if v}
    protocol = dataclasses.replace(protocol, **changes)
    return evaluate_lib.evaluate_synthetic(key, _to_numpy(x_syn), _to_numpy(y_syn),
                                           _to_numpy(x_test), _to_numpy(y_test), protocol,
                                           progress=progress)


# ------------------------------------------------------------------------------------ helpers
def _to_numpy(x: Any) -> Any:
    return np.asarray(x) if isinstance(x, jax.Array) else x


def _check_ipc(ipc: Any) -> int:
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
    return int(ipc)


def _meta_checkpoint(meta: str, config: ml_collections.ConfigDict) -> str:
    if meta == META_FROM_CONFIG:
        return config.meta_checkpoint
    if meta == META_FRESH or meta == "":
        return ""
    if not isinstance(meta, (str, os.PathLike)):
        raise TypeError(f"meta must be {META_FROM_CONFIG!r}, {META_FRESH!r} or a checkpoint "
                         f"directory, got {meta!r}")
    return os.fspath(meta)


def _pool_subset(y: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """The first ``per_class`` indices of every class (all of a smaller class), sorted."""
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class]
                                   for c in range(num_classes)]))


def _pool_dataset(name: str, x: np.ndarray, y: np.ndarray, num_classes: int,
                  class_names: list[str], preprocessing: data.Preprocessing) -> data.Dataset:
    return data.Dataset(name=name, x_train=x, y_train=y, x_test=x[:1], y_test=y[:1],
                        num_classes=num_classes, class_names=tuple(class_names),
                        preprocessing=preprocessing)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
