"""flemme-cnn: the convolutional encoder family (registered through the ``flemme`` entry point)."""

__version__ = "0.1.0"
