"""mfutils.model: The model layer: architecture tables, loading, token groups, the hooks (interventions as context managers),
prefix reuse, the batch loop that halves on out-of-memory, and the one knockout-edge registry.

Modules
-------
archs            Architecture adapters: one table of facts per supported MLLM architecture.
batching         Batched loops that survive running out of memory: a batch that does not fit is retried at half the size.
edges            The knockout edges: one registry that the sweep, the plots and the explorer read.
groups           Token groups: which positions of an encoded batch belong to the image, the context, the instruction, ...
hooks            Interventions on the language model of an MLLM: attention knockout, head scaling, capture, logit lens.
inputs           Processor inputs of a batch of samples, without token groups (training and behavioural evaluation).
loading          Loading MLLMs by name: the shipped tiny model, tiny random models of each architecture, real checkpoints.
prefix           Prefix reuse: record one clean forward of a batch, then rerun only the layers and rows an intervention can change (design section 4).
tiny             Tiny models of each architecture, built offline: a word-level tokenizer and the processor and config that the architecture table (``mfutils.model.archs.ARCHS``) makes for it.

Each module's docstring lists its public API with shapes and a short example.
"""
