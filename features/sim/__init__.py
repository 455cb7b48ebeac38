"""The supply-chain simulator's internals; the public surface is `features.simulate`."""
