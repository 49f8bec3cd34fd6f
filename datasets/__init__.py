"""rayinfer's dataset readers: sample lists, loading, ground truth and evaluation.

Name clash: this top-level package is called `datasets`, as is Hugging Face's. The
project keeps the name (the folders show the pipeline), and `jobs` makes the clash
harmless: it puts the project root first on `sys.path` (and on Ray workers'
PYTHONPATH), and fails with a clear message if Hugging Face's package was imported
first in the same process. See the README, "The `datasets` name".
"""

#: Marker that tells this package apart from Hugging Face's `datasets`.
IS_RAYINFER = True
