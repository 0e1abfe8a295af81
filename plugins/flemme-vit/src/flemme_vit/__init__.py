"""flemme-vit: the ``vit`` and ``swin`` encoder families (registered through the ``flemme`` entry point)."""

__version__ = "0.1.0"
