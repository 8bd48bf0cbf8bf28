"""mfutils.data: The data layer: prompts, samples, the synthetic world, the MC2 benchmark, split manifests.
Model-free: imports only mfutils.core.

Modules
-------
counterparts     The single-modality versions of a conflict sample, for the world and for MC2 alike.
datasets         Versioned datasets of a chain run: notebook 01 writes a manifest, later notebooks load and verify it.
mc2              The MC2 modality-conflict benchmark (arXiv 2505.20977) as a dataset of the chain: records, COCO images, samples.
prompts          The prompt representation shared by the world, the token groups and the analyses.
sample           The sample type shared by the synthetic world and MC2, and the checksum that identifies a list of samples.
world            The synthetic modality-conflict world (design section 2): rendered objects, text contexts, instructions.

Each module's docstring lists its public API with shapes and a short example.
"""
