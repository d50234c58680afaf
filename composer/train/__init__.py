"""Training: the loop (loop), batches (batches), optimizers and parameter
groups (optim), checkpoints (checkpoint), process setup and collectives of the launch (launch), the run folder
(runlog) and collapse monitors (monitor).

    composer.train.train(spec, composer.train.TrainOptions(out="runs/x", data="shapes:n=4096"))
"""
from composer.train.loop import TrainError, TrainOptions, train

__all__ = ["train", "TrainOptions", "TrainError"]
