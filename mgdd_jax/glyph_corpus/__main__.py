"""Render the glyph corpus (the offline many-class meta-training set) into the cache.

    python -m mgdd_jax.glyph_corpus [--num_classes=1000 --per_class=64 --image_size=32
                                     --seed=0 --out=PATH --font_dirs=/usr/share/fonts]

writes ``$MGDD_JAX_CACHE/glyphs/glyphs-c1000-n64-s32-seed0.npz`` (default cache
``~/.cache/mgdd_jax``), where ``load_dataset("glyphs")`` finds it. More:
:mod:`mgdd_jax.glyph_corpus.cli`.
"""

from absl import flags

from mgdd_jax.glyph_corpus import cli

flags.adopt_module_key_flags(cli)  # --help lists the builder's flags

if __name__ == "__main__":
    cli.run()
