"""Attention Branch Networks: training, attention maps and their comparison with CAM-style explanations."""

__version__ = "0.1.0"
