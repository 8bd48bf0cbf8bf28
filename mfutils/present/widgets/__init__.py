"""mfutils.present.widgets: The explorers of notebook 07, one module each. Builders return a widget and never display it.

Modules
-------
attention
    The attention view: one layer's attention map (one head, or the mean of heads) for one sample, with the
    token-group boundaries marked, and the share of the answer position's attention on each group.
    API: attention_view, AttentionView
board
    The head board: a layer x head grid of buttons coloured by head scores (notebook 03); a click cycles a head
    normal -> blocked -> amplified (alpha slider) -> normal, and the MFR on a fixed batch and one sample's
    answer update.
    API: head_board, HeadBoard, HEAD_STATES
browser
    The sample browser: one sample's image, its prompt's tokens coloured by group, the instruction, both
    candidate answers and the model's probabilities.
    API: sample_browser, SampleBrowser
common
    The explorers' shared pieces: the per-sample forward cache, the answer readout, HTML readouts, busy,
    debounce.
    API: follow_flags, Forwards, answer_summary, sample_dropdown, image_png, readout, busy_label,
         distribution_html, margin_text, other_label, busy, Debounce, BUSY
knockout
    The knockout explorer: cut one attention edge (source group -> target group) in a window of layers for one
    sample, and see the candidate distribution and the margin move against the (cached) unhooked run.
    API: knockout_explorer, KnockoutExplorer, SOURCE_GROUPS, TARGET_GROUPS

Each module's docstring lists its public API with tensor shapes and a short example.
"""
