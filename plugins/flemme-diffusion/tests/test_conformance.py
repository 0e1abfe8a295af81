"""flemme's conformance kit on this plugin's architectures (ldm needs a trained autoencoder file
and is registered with ``requires=``, so the kit skips it): build in 2D and 3D, one training
step per stage with gradients everywhere, predict at the input size."""

import pytest

from flemme_core.testing import check_architectures


@pytest.mark.parametrize("arch", ["vae", "ddpm", "edm", "sdm"])
def test_architectures_pass_the_kit(arch):
    check_architectures("cnn", archs=[arch])
