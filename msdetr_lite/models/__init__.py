"""Deformable-DETR++ with MS-DETR mixed supervision (and the schemes it is compared with)."""
from .detector import MSDETR, build_model, group_attention_mask
from .postprocess import postprocess

__all__ = ["MSDETR", "build_model", "group_attention_mask", "postprocess"]
