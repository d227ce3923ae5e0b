r"""Train an attnzoo segmentor.

    python train.py --config configs/quickstart.py --workdir runs/quickstart
    python train.py --config configs/mmseg.py:danet_r101_d8,cityscapes --workdir runs/danet \
        --config.dataset.manual_dir=/data/cityscapes --config.batch_size=16

Any config field can be overridden (``--config.optimizer.learning_rate=0.005``).
Running the same command again resumes from the newest checkpoint in
``--workdir``. Compiled programs are kept in JAX's persistent compilation cache
(``--compilation_cache=DIR``, default ``~/.cache/attnzoo/jax``;
``--nouse_compilation_cache`` turns it off), so a second start skips most compilation.
"""

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and predictions.")
flags.DEFINE_bool("debug", False, "Show the traceback of errors a user can fix (bad config, "
                  "files, workdir); otherwise they print one line.")
flags.DEFINE_string("compilation_cache", None, "Directory of JAX's persistent compilation cache "
                    "(default: $ATTNZOO_COMPILATION_CACHE or ~/.cache/attnzoo/jax).")
flags.DEFINE_bool("use_compilation_cache", True, "Read and write compiled programs there; "
                  "--nouse_compilation_cache compiles everything afresh.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    import jax

    if config.distributed:
        jax.distributed.initialize()
    logging.set_verbosity(logging.WARNING)
    from attnzoo._cli import one_line_errors
    from attnzoo.engine import train_and_evaluate, use_compilation_cache

    with one_line_errors(flags.FLAGS.debug):
        use_compilation_cache(flags.FLAGS.compilation_cache,
                              enabled=flags.FLAGS.use_compilation_cache)
        result = train_and_evaluate(config, flags.FLAGS.workdir)
    if jax.process_index() == 0:
        print(f"final mIoU: {100 * result['mIoU']:.2f}")


if __name__ == "__main__":
    from attnzoo._cli import parse_absl_flags

    app.run(main, flags_parser=parse_absl_flags)
