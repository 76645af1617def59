"""Fashion-MNIST core: data, two MLP implementations, inits and the trainer.

Nothing in this package imports MLflow or Optuna; tracking plugs in through callbacks.
"""
