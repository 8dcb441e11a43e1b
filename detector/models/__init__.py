"""The model: CSPDarknet backbone, PAN-FPN neck, decoupled head (see detector.py)."""
from detector.models.detector import Detector, build_model
from detector.models.head import DecoupledHead, HeadOutput
from detector.models.postprocess import postprocess

__all__ = ["Detector", "build_model", "DecoupledHead", "HeadOutput", "postprocess"]
