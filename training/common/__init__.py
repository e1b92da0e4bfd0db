"""Building blocks of the self-supervised training script (``training.pretrain_dino``).

Each piece is a separate, swappable module:

* :mod:`.dino` - DINO projection head, multi-crop wrapper, DINO loss (centring, sharpening).
* :mod:`.schedules` - cosine schedules, parameter groups, gradient clipping, last-layer freeze.
* :mod:`.ema` - EMA update of the teacher.
* :mod:`.crops` - CT multi-crop augmentation and the label-guided crop sampler.
* :mod:`.views` - view pairing (adjacent slices / second series) for multi-view training.
* :mod:`.ssl_data` - the training dataset: slices -> crops (+ locations) per sample.
* :mod:`.distributed` - torchrun / DDP set-up and all-reduce helpers.
* :mod:`.checkpoint` - save / resume.
"""
