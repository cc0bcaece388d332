"""The LCA Lab version, in a module of its own so the store can read it without importing lca."""

__version__ = "0.1.0"  # also written into every run file (attribute lca_lab_version)
