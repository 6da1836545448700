"""Training: train state, optimizers, losses, loops and the pretraining/finetuning trainers."""
