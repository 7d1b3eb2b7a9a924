"""hessbatch.deep: ABS/ABSA over PyTorch models."""

# --- trainer, models and data (owner: deep trainer) ---
from ._data import (DataBundle, load_cifar10, load_data, load_mnist5k, split_dataset,
                    synthetic_classification)
from ._models import MLP, ResNet18, SmallCNN, make_activation, make_model
from ._loop import TrainingDiverged
from ._trainer import EpochMetrics, Trainer, checkpoint_digest, load_checkpoint
# --- end trainer block ---

# --- curvature and adversarial (owner: deep curvature) ---
from ._adversarial import fgsm, random_sign
from ._eigen import (EigenResult, NotConvergedWarning, WarmStartEigenvalue, lanczos,
                     power_iteration, top_eigenvalue)
from ._hvp import HessianOperator, hessian_vector_product
from ._selftest import HVPCheck, HVPCheckError, HVPCheckWarning, check_hvp, check_mean_loss
# --- end curvature block ---

# --- your own loop: batch sampler and adapter (owner: integrations) ---
# The Lightning callback lives in hessbatch.deep.lightning (extra [lightning]); never imported here.
from ._loop import AdaptiveBatchSampler, LoopAdapter
# --- end integrations block ---
# --- data parallelism over torch.distributed (owner: distributed) ---
from ._distributed import (DataParallel, DistributedConfigError, DistributedHessianOperator,
                           DistributedTrainer, distributed_top_eigenvalue)
# --- end data parallelism block ---

# --- the precursor study: spectrum, trace, robustness (owner: study, issue 13) ---
from ._robustness import attack_accuracy, interpolate, loss_along, pgd
from ._spectrum import (DatasetHessian, SpectrumResult, TraceResult, bottom_eigenvalue,
                        hutchinson_trace, input_hessian_extremes, top_k_eigenvalues)
# --- end study block ---
