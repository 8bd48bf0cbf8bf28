"""mfutils.present.widgets: The explorers of notebook 07, one module each. Builders return a widget and never display it.

Modules
-------
attention        The attention view: one layer's attention map (one head, or the mean of heads) for one sample, with the token-group boundaries marked, and the share of the answer position's attention on each group.
board            The head board: a layer x head grid of buttons coloured by head scores (notebook 03); a click cycles a head normal -> blocked -> amplified (alpha slider) -> normal, and the MFR on a fixed batch and one sample's answer update.
browser          The sample browser: one sample's image, its prompt's tokens coloured by group, the instruction, both candidate answers and the model's probabilities.
common           The explorers' shared pieces: the per-sample forward cache, the answer readout, HTML readouts, busy, debounce.
knockout         The knockout explorer: cut one attention edge (source group -> target group) in a window of layers for one sample, and see the candidate distribution and the margin move against the (cached) unhooked run.

Each module's docstring lists its public API with shapes and a short example.
"""
