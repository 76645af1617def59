"""Fashion-MNIST training core: config, data, inits, two MLP implementations, trainer, checkpoints.

It imports torch (torchvision only to download the data) and the standard library only: nothing of
MLflow, Optuna, matplotlib or the command line (tests/core/test_layers.py checks every module in a
fresh interpreter). Tracking plugs in through the trainer's callbacks; the MLflow side lives
beside it in `fmnist_tracking`.
"""
