"""Training: state, the jitted loop, EMA and checkpoints (flax, optax, orbax)."""

from genflow.training._loop import (
    CHECKPOINT_DIR as CHECKPOINT_DIR,
    CONFIG_FILE as CONFIG_FILE,
    METRICS_FILE as METRICS_FILE,
    TrainingInterrupted as TrainingInterrupted,
    check_workdir_compatible as check_workdir_compatible,
    make_train_chunk as make_train_chunk,
    restore_run as restore_run,
    restore_train_state as restore_train_state,
    train as train,
)
from genflow.training._families import (
    data_shape_of as data_shape_of,
    make_batches as make_batches,
    make_loss as make_loss,
    make_sampling as make_sampling,
    num_fields as num_fields,
    reference_data as reference_data,
)
from genflow.training._snapshots import (
    SAMPLES_DIR as SAMPLES_DIR,
    SampleSnapshots as SampleSnapshots,
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
from genflow.training.checkpoint import Checkpointer as Checkpointer, has_checkpoint as has_checkpoint

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "SAMPLES_DIR",
    "SampleSnapshots",
    "check_workdir_compatible",
    "Checkpointer",
    "Setup",
    "TrainState",
    "TrainingInterrupted",
    "build_model",
    "data_shape_of",
    "has_checkpoint",
    "init_train_state",
    "learning_rate_schedule",
    "make_batches",
    "make_loss",
    "make_optimizer",
    "make_sampling",
    "make_train_chunk",
    "model_fn_from",
    "num_fields",
    "reference_data",
    "restore_run",
    "restore_train_state",
    "train",
]
