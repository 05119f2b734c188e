"""Tasks: the PyTorch problems that studies tune optimizers on."""
