"""hessbatch.deep: ABS/ABSA over PyTorch models."""

# --- trainer, models and data (owner: deep trainer) ---
from ._data import (DataBundle, load_cifar10, load_data, load_mnist5k, split_dataset,
                    synthetic_classification)
from ._models import MLP, ResNet18, SmallCNN, make_activation, make_model
from ._trainer import EpochMetrics, Trainer, load_checkpoint
# --- end trainer block ---
