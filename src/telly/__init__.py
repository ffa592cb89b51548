"""telly: efficient fine-tuning of pre-trained code models (a re-creation of Telly, ISSTA 2023)."""

__version__ = "0.1.0"
