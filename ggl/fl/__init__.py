"""The federated client: victim models, what leaves the device, and label inference from it."""

from ggl.fl.client import SharedUpdate, fedavg_update, shared_update
from ggl.fl.labels import infer_labels, last_linear_indices
from ggl.fl.models import VICTIMS, load_victim_checkpoint, make_victim
from ggl.fl.normalization import Normalization
from ggl.fl.training import TrainedVictim, TrainingSpec, train_victim, victim_stage

__all__ = [
    "VICTIMS",
    "Normalization",
    "SharedUpdate",
    "TrainedVictim",
    "TrainingSpec",
    "fedavg_update",
    "infer_labels",
    "last_linear_indices",
    "load_victim_checkpoint",
    "make_victim",
    "shared_update",
    "train_victim",
    "victim_stage",
]
