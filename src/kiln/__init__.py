"""kiln: a self-hosted VM image factory for Azure VM Image Builder templates and DevTest Labs factories."""

__version__ = "0.1.0"
