"""Boot Linux from a root filesystem exported over the network, with an overlay on top."""

__version__ = "0.1.0"
