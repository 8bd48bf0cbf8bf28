"""mfutils.present: The present layer: figures, the explorers (widgets/), token-group HTML, the model card and the claims report.

Modules
-------
card             The model card of a trained tiny checkpoint: provenance, recipe and reasons, held-out accuracy.
display          Showing prompts to a reader: tokens coloured by group, sample galleries, tables.
plots            Figures: one seaborn theme, one way to save.
plots_flow       Figures of notebook 02 (information flow), drawn from the document of ``mfutils.study.information_flow``.
plots_heads      Figures of notebooks 03-06: head scores, blocking, amplification, capability retention.
report           The claims report: every claim C1-C12, what the paper says, what this run measured, a verdict by the rule written in ``paper/claims.yaml`` before the numbers were known, and the figure that shows it.
widgets/         The explorers of notebook 07, one module each. Builders return a widget and never display it.

Each module's docstring lists its public API with shapes and a short example.
"""
