"""Label assignment: which anchor learns which ground truth, and with what soft target."""
from detector.assigners.base import AssignResult

__all__ = ["AssignResult"]
