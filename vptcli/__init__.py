"""vptcli: visual prompt tuning of a frozen Vision Transformer for industrial defect classification."""

__version__ = "0.1.0"
