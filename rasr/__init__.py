"""rasr: retrieval-augmented super resolution (the library; no Prefect, no Ray)."""

import logging

# peft/diffusers import bitsandbytes when installed; on CPU machines it warns about an optional kernel
# package at import time, which reads like an error to users. Its real errors still show.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__version__ = "0.1.0"
