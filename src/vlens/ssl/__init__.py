"""Self-supervised learning: DINO (``dino.py``: head, loss, centre, EMA; ``augment.py``: multi-crop without
torchvision; ``train.py``: the loop, checkpoints, DDP) and a probe that compares backbones (``probe.py``)."""
