"""ckptrace: watch and checkpoint whole Linux pid namespaces from user space."""

__version__ = "0.1.0"
