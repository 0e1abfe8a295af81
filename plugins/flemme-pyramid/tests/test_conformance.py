"""flemme's conformance kit on this plugin's architectures: hunet and hae build with a family in
2D and 3D, train one step (every trainable parameter gets a gradient) and predict at the input size."""

import pytest

from flemme_core.testing import check_architectures


@pytest.mark.parametrize("arch", ["hunet", "hae"])
def test_architectures_pass_the_kit(arch):
    check_architectures("cnn", archs=[arch])
