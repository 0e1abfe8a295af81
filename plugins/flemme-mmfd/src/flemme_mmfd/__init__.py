"""flemme-mmfd: multi-model fusion and distillation (registered through the ``flemme`` entry point).

Import-cheap: nothing here imports torch; see :mod:`flemme_mmfd.plugin` for what is registered.
"""

__version__ = "0.1.0"
