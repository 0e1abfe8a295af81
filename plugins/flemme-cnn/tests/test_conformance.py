"""flemme's conformance kit (flemme_core.testing) on this plugin's families: the contract, the
context rules, the common keys (norm, act, dropout, drop_path honoured or refused), save/load,
and the core architectures in 2D and 3D; every installed architecture in the slow run."""


from flemme_core.testing import conformance_tests

test_conformance, test_conformance_every_architecture = conformance_tests("cnn")

