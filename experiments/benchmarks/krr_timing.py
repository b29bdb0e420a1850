r"""Micro-benchmark of the KRR core: `solve_labels` (Eq. 3) and `krr_loss` + grad (Eq. 1).

    python -m experiments.benchmarks.krr_timing --out=results/benchmarks/krr_timing.json

Features are ReLU random features of dimension p (the cost does not depend on where they came
from). Each figure is the median of --repeats jitted calls after warm-up (compile excluded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import cli
from experiments.benchmarks.common import machine_info, time_fn
from mgdd_jax import krr, outputs

_OUT = flags.DEFINE_string("out", "results/benchmarks/krr_timing.json", "JSON output path.")
_N_T = flags.DEFINE_integer("n_t", 1024, "Real batch size.")
_P = flags.DEFINE_integer("p", 2048, "Feature dimension.")
_N_S = flags.DEFINE_list("n_s", ["10", "100", "500"], "Synthetic set sizes.")
_C = flags.DEFINE_integer("num_classes", 10, "Classes.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats per case.")


def _features(key, n, p):
    return jax.nn.relu(jax.random.normal(key, (n, p)) + 0.2)


def main(argv):
    del argv
    cli.quiet_library_logs()
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    n_t, p, c = _N_T.value, _P.value, _C.value
    ft = _features(k1, n_t, p)
    yt = krr.centred_onehot(jax.random.randint(k2, (n_t,), 0, c), c)
    labels = jax.jit(krr.solve_labels)
    loss_grad = jax.jit(jax.value_and_grad(krr.krr_loss))
    rows = []
    for n_s in map(int, _N_S.value):
        fs = _features(jax.random.fold_in(k3, n_s), n_s, p)
        ys = labels(fs, ft, yt)
        t_labels = time_fn(lambda: labels(fs, ft, yt), repeats=_REPEATS.value)
        t_loss = time_fn(lambda: loss_grad(fs, ys, ft, yt), repeats=_REPEATS.value)
        row = {"n_t": n_t, "n_s": n_s, "p": p, "solve_labels": t_labels,
               "krr_loss_and_grad": t_loss}
        rows.append(row)
        print(f"n_t={n_t} n_s={n_s:4d} p={p}: solve_labels {t_labels['median_s']*1e3:8.2f} ms"
              f"   krr_loss+grad {t_loss['median_s']*1e3:8.2f} ms")
    outputs.write_json(_OUT.value, {"machine": machine_info(), "dtype": str(jnp.float32),
                                   "reg": krr.DEFAULT_REG, "results": rows})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
