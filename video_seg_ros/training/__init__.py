"""ETC training pipeline: datasets with aligned augmentation, cached flow, temporal loss, teacher
distillation, and the trainer behind ``video-seg-train`` (single process or torchrun DDP)."""
