"""msdetr_lite: a compact, readable MS-DETR (Efficient DETR Training with Mixed Supervision)."""
__version__ = "0.1.0"
