"""mfutils.measure: The measure layer: answers and candidate ids, margins and INSSD, the one `follows` path over one `Prepared`
batch cache, and the statistics (intervals, bootstrap, relative drops).

Modules
-------
answers          What counts as an answer: candidate token ids, targets per sample, and the answer-position logits.
follow           Does the model follow the instruction? The one path for every MFR, failure search, readout and evaluation.
margins          Measures on answer logits: the instructed margin, INSSD, flips, instructed wins (design section 5).
prefix           Prefix reuse, checked: one clean forward per batch that interventions rerun from (design section 4).
prepared         Samples encoded once and reused across interventions, and the one batch loop that survives out of memory.
stats            Intervals for every reported number.

Each module's docstring lists its public API with shapes and a short example.
"""
