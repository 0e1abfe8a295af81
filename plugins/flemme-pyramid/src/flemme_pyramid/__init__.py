"""flemme-pyramid: hierarchical architectures (``hunet``, ``hae``) and the pyramid loss.

Registered through the ``flemme`` entry point (:mod:`flemme_pyramid.plugin`); nothing
here imports torch until a model or loss is built.
"""

__version__ = "0.1.0"
