"""Eden: a reproducible study of anatomy-aware self-supervised learning in medical imaging.

Importing the package is cheap: it pulls in neither torch nor MONAI. Each submodule imports what it needs.
"""

__version__ = "0.1.0"
