"""mfutils.present: The present layer: figures, the explorers (widgets/), token-group HTML, the model card, the claims report
and its rules.

Modules
-------
card
    The model card of a trained tiny checkpoint: provenance, recipe and reasons, held-out accuracy.
    API: write_card, DESIGN_NOTES, RETRAIN_TOLERANCE
card_smol
    The model card of the pretrained-LM model (``smol``): recipe and reasons, wall time, hashes, held-out table.
    API: TARGETS, SMOL_DESIGN_NOTES, write_smol_card
display
    Showing prompts to a reader: tokens coloured by group, sample galleries, tables.
    API: GROUP_COLORS, tokens_html, legend_html, plot_gallery
plots
    Figures: one seaborn theme, one way to save.
    API: set_theme, save_figure, plot_training_curve, plot_accuracy_bars, COLUMN_WIDTH
plots_flow
    Figures of notebook 02 (information flow), drawn from the document of ``mfutils.study.information_flow``.
    API: ESTIMATORS, plot_knockout, plot_knockout_panels, plot_estimators, plot_flip_rate, plot_controls,
         plot_saliency, plot_ldar, plot_dla, plot_subspace, plot_stability
plots_heads
    Figures of notebooks 03-06: head scores, blocking, amplification, capability retention.
    API: plot_head_scores, plot_score_agreement, plot_layer_counts, plot_block_mfr, plot_random_drops,
         plot_block_figure, plot_share_sweep, plot_recovery, plot_heldout_recovery, plot_amplification_figure,
         plot_capability, plot_capability_held_out, plot_capability_figure
plots_position
    Figures of notebook 08 (where the instruction stands): MFR against position, the instruction's effect between
    twins, knockout per position, succeeded vs failed within the failure pool's position.
    API: plot_position_mfr, plot_instruction_effect, plot_position_knockout, plot_failure_curves
plots_selection
    Figure of notebook 03's selection stability: how often each head is again in the top k under resampling.
    API: plot_selection_stability
report
    The claims report: every claim C1-C12 and the claims of ours added by amendments (C14), what the paper says, what this run measured, a verdict by the rule
    written in ``paper/claims.yaml`` before the numbers were known, and the figure that shows it.
    API: load_claims, verdict, assess, write_report, write_shipped_report, Verdict, FIGURES, RULES,
         MissingMeasurement
report_position
    The report's section "Where the instruction stands", and C6 / C9 read on the shifted test split (A9).
    API: shifted_readings, position_section
report_compare
    The shipped models side by side: each claim's verdict per model, and a short contrast of what was measured
    (depth of the instruction->last effect, the identified heads, the blocking drop), one column per model.
    API: NOT_MEASURED, ROWS, Results, architecture, strongest_knockout, knockout_layer, knockout_effect,
         identified_heads, heads_share, block_drop, anchor, side_by_side, contrast_table
rules_common
    What the claim rules share: verdict words, the rule record, number formatting and INSSD curve helpers.
    API: REPRODUCED, PARTLY, NOT, NA, MISSING, Rule, RuleFn, MissingMeasurement, num, fmt, strongest,
         significant, describe, uses_position_pool
rules_control
    The rules of the head-intervention claims (notebooks 04-06): C6, C7, C8, C9. ``RULES``: claim id ->
    ``rules_common.Rule``.
    API: RULES, c6_original, c7_original, c8_original, c9_original, c7_amended, c8_amended, c9_amended
rules_flow
    The rules of the information-flow claims (notebook 02): C1, C2, C3, C4, C10, C11, C12. ``RULES``: claim id
    -> ``rules_common.Rule``.
    API: RULES, c2_windows
rules_heads
    The rule of the head-identification claim (notebook 03): C5. ``RULES``: claim id -> ``rules_common.Rule``.
    API: RULES
rules_position
    The rules read from notebook 08: C14 (ours, A9) and C10 within a position's pool (A8).
    API: RULES, c14, c10_position

widgets/
    The explorers of notebook 07, one module each. Builders return a widget and never display it.

Each module's docstring lists its public API with tensor shapes and a short example.
"""
