"""flemme-convnext: an example third-party encoder family for flemme."""

__version__ = "0.1.0"
