"""Restoration: turning an archive photo into its enhanced derivative.

The generators (`generators/`: bicubic, Real-ESRGAN, OSEDiff, RefDSR, with their tiling), decoding and
encoding images (`images`, the file formats of `formats`, metadata carried over in `metadata`, C2PA
content credentials in `credentials`), the colour correction towards the input (`colorfix`), same-scene
reference transfer (`transfer`), prompts for diffusion generators (`tagger`), the enhance worker that
runs a shard's photos through retrieval and a generator and writes the outputs (`worker`), and an
enhance run before it starts: its config, checks and plan (`enhance_run`).
"""
