"""The kit's merged tree: manifest and config in, what ``kit unpack`` would write out."""

from modelkitfs.kit.filters import Filter, parse_filters
from modelkitfs.kit.labels import parse_labels
from modelkitfs.kit.modelkit import ModelKit, open_modelkit
from modelkitfs.kit.tree import ROOT_INODE, KitTree, Node

__all__ = [
    "ROOT_INODE",
    "Filter",
    "KitTree",
    "ModelKit",
    "Node",
    "open_modelkit",
    "parse_filters",
    "parse_labels",
]
