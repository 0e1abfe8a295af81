"""flemme's conformance kit (flemme_core.testing) on this plugin's families: the contract, the
context rules, the common keys (norm, act, dropout, drop_path honoured or refused), save/load,
and the core architectures in 2D and 3D; every installed architecture in the slow run."""

import pytest

from flemme_core.testing import check_family


@pytest.mark.parametrize("family", ["mamba"])
def test_conformance(family):
    check_family(family, archs=["unet", "ae"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mamba"])
def test_conformance_with_every_installed_architecture(family):
    check_family(family)
