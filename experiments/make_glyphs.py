"""Render the glyph corpus into the cache (a checkout's alias of ``mgdd_jax.glyph_corpus``).

    python -m experiments.make_glyphs [flags of mgdd_jax.glyph_corpus.cli]

Same flags, output and exit status as ``python -m mgdd_jax.glyph_corpus``, which works from
an installed package too.
"""

from absl import flags

from mgdd_jax.glyph_corpus import cli

flags.adopt_module_key_flags(cli)  # --help lists the builder's flags

if __name__ == "__main__":
    cli.run()
