"""flemme-mamba: the VMamba (selective-scan) encoder family for flemme, 2D and 3D.

Import-cheap: the model code (and torch) is imported when a model is built.
"""

__version__ = "0.1.0"
