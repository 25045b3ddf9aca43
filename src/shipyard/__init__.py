"""Shipyard: a container registry that builds images from artifacts and deploys them."""

__version__ = "0.1.0"
