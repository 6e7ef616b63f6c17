"""Generalize: deprovision a root tree so that machines made from it are new machines."""
