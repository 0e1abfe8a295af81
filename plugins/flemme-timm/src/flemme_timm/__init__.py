"""flemme-timm: pretrained encoder families (timm, sam, clip) loaded from local files only."""

__version__ = "0.1.0"
