"""Scoring by the FLARE 2024 Task 1 rules: DSC and NSD per case (``metrics``) and the
command that scores a folder of masks (``python -m evaluation``).

Kept apart from ``training`` and ``benchmark``, which both use it, as nnU-Net keeps its
evaluation apart: it imports nothing of the project.
"""
