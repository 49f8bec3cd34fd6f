"""rayinfer's dataset readers: sample lists, loading, ground truth and evaluation.

Installed as `rayinfer.datasets`, so it never collides with Hugging Face's `datasets`.
"""
