"""The training engine: train state, sharded steps, checkpoints, logging and the loop.

``train_and_evaluate(config, workdir)`` is what ``train.py`` runs;
``restore(workdir_or_path)`` gives ``(model, variables, config)`` for
inference. The engine knows models only through ``attnzoo.models.create`` and
the config, and data only through ``attnzoo.data.input`` (imported when
training starts: restoring a checkpoint needs no TensorFlow). Modules:
``config`` (the fields and their defaults), ``state`` (the train state and
the model a config names), ``steps`` (jitted train / eval steps), ``optim``,
``checkpoint``, ``logging``, ``train`` (the loop), ``cache`` (the persistent compilation
cache the commands use).
"""

from attnzoo.engine.cache import use_compilation_cache
from attnzoo.engine.checkpoint import Checkpoints, restore
from attnzoo.engine.config import default_config
from attnzoo.engine.optim import make_optimizer
from attnzoo.engine.state import TrainState, build_model, init_state
from attnzoo.engine.steps import evaluate, make_eval_step, make_train_step
from attnzoo.engine.train import NonFiniteLossError, train_and_evaluate

__all__ = [
    "Checkpoints", "NonFiniteLossError", "TrainState", "build_model", "default_config", "evaluate",
    "init_state", "make_eval_step", "make_optimizer", "make_train_step", "restore",
    "train_and_evaluate", "use_compilation_cache",
]
