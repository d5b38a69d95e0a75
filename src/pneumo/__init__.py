"""Pneumo: pneumonia detection in pediatric chest X-rays."""

__version__ = "0.1.0"
