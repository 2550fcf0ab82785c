"""Training: batches, state, the jitted loop, EMA and checkpoints (flax, optax, orbax).

The loss and what the network predicts belong to the config's method
(:mod:`genflow.methods`); this package runs it. Using a trained run (restore, sample,
evaluate) is :mod:`genflow.run`.
"""

from genflow.training._data import (
    data_shape_of as data_shape_of,
    drop_labels as drop_labels,
    image_batches as image_batches,
    make_batches as make_batches,
    reference_data as reference_data,
    source_data as source_data,
)
from genflow.training._loop import (
    CHECKPOINT_DIR as CHECKPOINT_DIR,
    CONFIG_FILE as CONFIG_FILE,
    METRICS_FILE as METRICS_FILE,
    SAMPLES_DIR as SAMPLES_DIR,
    NonFiniteTraining as NonFiniteTraining,
    TrainingInterrupted as TrainingInterrupted,
    check_resume_changes as check_resume_changes,
    check_workdir_compatible as check_workdir_compatible,
    config_changes as config_changes,
    fork_run as fork_run,
    make_train_chunk as make_train_chunk,
    restore_run as restore_run,
    restore_train_state as restore_train_state,
    train as train,
)
from genflow.training._state import (
    Setup as Setup,
    TrainState as TrainState,
    build_model as build_model,
    init_train_state as init_train_state,
    learning_rate_schedule as learning_rate_schedule,
    make_optimizer as make_optimizer,
    model_fn_from as model_fn_from,
)
from genflow.training._posthoc import (
    EMA_SNAPSHOT_DIR as EMA_SNAPSHOT_DIR,
    PosthocResult as PosthocResult,
    parse_weights as parse_weights,
    posthoc_ema as posthoc_ema,
)
from genflow.training._sharding import (
    batch_sharding as batch_sharding,
    check_distributed_args as check_distributed_args,
    cluster_in_environment as cluster_in_environment,
    global_batch as global_batch,
    initialize_distributed as initialize_distributed,
    make_mesh as make_mesh,
    place as place,
    replicated as replicated,
    state_shardings as state_shardings,
)
from genflow.training.checkpoint import Checkpointer as Checkpointer, has_checkpoint as has_checkpoint

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "EMA_SNAPSHOT_DIR",
    "METRICS_FILE",
    "PosthocResult",
    "SAMPLES_DIR",
    "Checkpointer",
    "Setup",
    "TrainState",
    "NonFiniteTraining",
    "TrainingInterrupted",
    "batch_sharding",
    "build_model",
    "check_distributed_args",
    "check_resume_changes",
    "check_workdir_compatible",
    "config_changes",
    "fork_run",
    "cluster_in_environment",
    "data_shape_of",
    "drop_labels",
    "global_batch",
    "has_checkpoint",
    "image_batches",
    "init_train_state",
    "initialize_distributed",
    "make_mesh",
    "state_shardings",
    "learning_rate_schedule",
    "make_batches",
    "make_optimizer",
    "make_train_chunk",
    "model_fn_from",
    "parse_weights",
    "place",
    "posthoc_ema",
    "reference_data",
    "replicated",
    "restore_run",
    "restore_train_state",
    "source_data",
    "train",
]
