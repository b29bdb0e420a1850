r"""Choose the default relative ridge of `mgdd_jax.krr` by measurement.

    python -m experiments.benchmarks.krr_reg --out=results/benchmarks/krr_reg.json

Candidates: FRePo's 1e-6 and RFAD's 5e-3 (``lam = reg * trace(K) / n``). On Fashion-MNIST with
random FRePo ConvNets (width 128, norm none / instance), for supports of n_s images where every
image appears twice (an exactly singular K_ss, which multi-initialisation and tiny classes can
produce), it records for each reg and seed:

* whether the float32 Eq. 1 loss and its gradient are finite;
* the float32 loss's relative error against a float64 solve at the same reg;
* the KRR test accuracy of the same support without duplicates (does the ridge cost accuracy?).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.benchmarks.common import machine_info
from mgdd_jax import data, krr, nets, outputs

_OUT = flags.DEFINE_string("out", "results/benchmarks/krr_reg.json", "JSON output path.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Random networks per case.")
_REGS = flags.DEFINE_list("regs", ["1e-6", "5e-3"], "Relative ridges to compare.")
_N_S = flags.DEFINE_list("n_s", ["10", "100", "500"], "Support sizes (half unique, duplicated).")
_N_T = flags.DEFINE_integer("n_t", 1024, "Real batch size.")
_N_TEST = flags.DEFINE_integer("n_test", 2000, "Test images for the KRR accuracy.")


def main(argv):
    del argv
    cli.quiet_library_logs()
    ds = data.load_dataset("fashion_mnist")
    c = ds.num_classes
    key = jax.random.key(0)
    index = data.ClassIndex.from_labels(ds.y_train, c)
    t_idx = np.asarray(data.balanced_batch_indices(jax.random.fold_in(key, 1), index, _N_T.value))
    xt, yt = ds.x_train[t_idx], krr.centred_onehot(ds.y_train[t_idx], c)
    xq, lq = ds.x_test[: _N_TEST.value], ds.y_test[: _N_TEST.value]
    rows = []
    for norm in ("none", "instance"):
        cfg = nets.ConvNetConfig(width=128, norm=norm, num_classes=c)
        for n_s in map(int, _N_S.value):
            per_class = max(1, n_s // (2 * c))
            s_idx = np.asarray(
                data.class_balanced_indices(jax.random.fold_in(key, n_s), index, per_class))
            xs_unique, ls_unique = ds.x_train[s_idx], ds.y_train[s_idx]
            xs = np.concatenate([xs_unique, xs_unique])
            for seed in range(_SEEDS.value):
                theta = nets.init_feature_params(jax.random.key(100 + seed), ds.image_shape, cfg)
                feat = jax.jit(lambda x: nets.conv_features(theta, x, cfg))
                ft, fs, fq = feat(xt), feat(xs), feat(xq)
                fsu = feat(xs_unique)
                for reg in map(float, _REGS.value):
                    ys = krr.solve_labels(fs, ft, yt, reg)
                    loss, grad = jax.value_and_grad(krr.krr_loss)(fs, ys, ft, yt, reg)
                    with jax.enable_x64(True):
                        f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
                        loss64 = float(krr.krr_loss(f64(fs), f64(ys), f64(ft), f64(yt), reg))
                    yu = krr.centred_onehot(ls_unique, c)
                    acc = float(jnp.mean(
                        jnp.argmax(krr.krr_predict(fsu, yu, fq, reg), -1) == lq))
                    row = {
                        "norm": norm, "n_s": int(xs.shape[0]), "seed": seed, "reg": reg,
                        "loss_f32": float(loss), "loss_f64": loss64,
                        "finite": bool(np.isfinite(float(loss))
                                       and np.all(np.isfinite(np.asarray(grad)))),
                        "rel_err": float(abs(float(loss) - loss64) / abs(loss64)),
                        "krr_test_acc_unique_support": acc,
                    }
                    rows.append(row)
                    print(row)
    summary = []
    for norm in ("none", "instance"):
        for n_s in sorted({r["n_s"] for r in rows}):
            for reg in map(float, _REGS.value):
                sel = [r for r in rows if r["norm"] == norm and r["n_s"] == n_s and r["reg"] == reg]
                errs = [r["rel_err"] for r in sel if r["finite"]]
                summary.append({
                    "norm": norm, "n_s": n_s, "reg": reg,
                    "finite_fraction": float(np.mean([r["finite"] for r in sel])),
                    "median_rel_err_f32_vs_f64": float(np.median(errs)) if errs else None,
                    "mean_krr_test_acc": float(np.mean(
                        [r["krr_test_acc_unique_support"] for r in sel])),
                })
    print("\nnorm      n_s   reg      finite  rel.err(f32)  KRR test acc")
    for s in summary:
        err = "   n/a  " if s["median_rel_err_f32_vs_f64"] is None else \
            f"{s['median_rel_err_f32_vs_f64']:.1e}"
        print(f"{s['norm']:9s} {s['n_s']:4d}  {s['reg']:.0e}  {s['finite_fraction']:5.2f}"
              f"   {err:>10s}    {s['mean_krr_test_acc']:.3f}")
    outputs.write_json(_OUT.value, {"machine": machine_info(), "summary": summary, "rows": rows})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
