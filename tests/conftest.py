import os

import pytest
import torch

from msdetr_lite.config import ModelConfig

os.environ.setdefault("MSDETR_FAST", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def micro_model_config(**overrides) -> ModelConfig:
    """A model small enough for unit tests: a forward+backward in well under a second."""
    cfg = ModelConfig(backbone="resnet18", backbone_norm="bn", num_classes=3, d_model=32, nheads=4,
                      n_points=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64,
                      num_queries=10, hybrid_num_queries=12, group_num=3, deform_backend="torch",
                      o2m_aux_ffn=False)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def micro_cfg():
    return micro_model_config
