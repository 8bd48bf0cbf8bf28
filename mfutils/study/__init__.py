"""mfutils.study: The study layer: one module per analysis of the chain, each with typed results; `results` reads and writes
every results file atomically.

Modules
-------
amplification    Amplifying the identified heads on failed samples: recovery, damage and a random control (notebook 05, C8).
blocking         Blocking the identified heads against random head sets: the MFR drop of notebook 04 (C6, C9).
dla              Attention vs MLP: direct logit attribution at the answer position, and the instruction-compliant subspace.
evaluate         Behavioural evaluation on the world: accuracy per category with intervals.
flow_batches     The batches the information-flow analyses run on: a ``Prepared``'s, or consecutive slices of a sample list.
identification   Identifying the heads that arbitrate between modalities: the top share by head score (notebook 03, C5).
information_flow Notebook 02 in one call: the failure search, every information-flow analysis, and its results document.
knockout         Attention-knockout sweeps: cut each edge in each window of k layers and record per-sample margins.
lens             Logit lens onto one answer direction, and the Latent Decision Agreement Rate (LDAR, ours).
mc2_eval         MC2 with a model: which samples it can score, the paper's per-model filter, and MFR on MC2.
results          The results files: every result document and array file is written and read here, atomically.
retention        Capability retention: accuracy per category with the identified heads blocked vs random sets (notebook 06, C7).
saliency         Information-flow saliency |A * dL/dA| per layer and token-group pair ("Label Words are Anchors", Wang et al. 2023).
scoring          Head scores: how much the instructed margin drops when one head is blocked (C5, design section 5).
selection        Choosing heads: the identified top share of a score table, random control sets, rank agreement.
splits           The split manifest of notebook 01, filtered for a model: the entry point above the model-free data layer.
stability        Stability of the knockout curves under less data (claim C12), from a stored sweep (no model run).
train            Training the embedded default model: a tiny Llava (CLIP vision tower + Llama decoder) on the world.

Each module's docstring lists its public API with shapes and a short example.
"""
