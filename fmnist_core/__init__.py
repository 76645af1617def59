"""Fashion-MNIST training core: config, data, inits, two MLP implementations, trainer, checkpoints.

config.py       the frozen RunConfig (CLI -> sweep -> trainer -> MLflow -> checkpoint) and the Objective
data.py         locate, verify, load, normalise, split; on-device batch augmentation
inits.py        seeded randomness: the nine init schemes, dropout masks
activations.py  one table of activations: function, derivative, nn.Module factory
learner.py      the Learner protocol the trainer talks to, and evaluating every member at once
metrics.py      logits -> loss and accuracy counts, the one place
mlp_manual.py   forward, backward, clipping and SGD by hand, no autograd
mlp_torch.py    the torch.nn twin, trained with torch.optim
trainer.py      device, seeding, the loop, early stopping, divergence, the best epoch
schedules.py    per-step learning rates from torch's schedulers
checkpoint.py   checkpoints anyone can read with torch.load(weights_only=True)
serving.py      a checkpoint as a plain nn.Sequential: evaluate, predict, the serving network
ensemble.py     one configuration's seeds folded into one exact checkpoint (their mean logits)
cost.py         what a configuration costs: parameters, training FLOPs
threads.py      torch's thread count while a CPU training runs: the CPUs free of other processes' load

It imports torch (torchvision only to download the data) and the standard library only: nothing of
MLflow, Optuna, matplotlib or the command line (tests/core/test_layers.py checks every module in a
fresh interpreter). Tracking plugs in through the trainer's callbacks; the MLflow side lives
beside it in `fmnist_tracking`.
"""
