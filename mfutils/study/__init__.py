"""mfutils.study: The study layer: one module per analysis of the chain, each with typed results; ``results`` reads and
writes every results file atomically.

Modules
-------
amplification
    Amplifying the identified heads on failed samples: recovery, damage and a random control (notebook 05, C8).
    API: ALPHAS, HALVES_STREAM, split_pool, split_halves, choose_alpha, AmplificationResult,
         amplification_experiment
blocking
    Blocking the identified heads against random head sets: the MFR drop of notebook 04 (C6, C9).
    API: INSTRUCTIONS, SHARES, share_counts, block_summary, BlockResult, block_experiment
control
    The random-head control of amendment A1: head sets drawn from the heads that are NOT identified, and an
    observed statistic of the identified heads against them (notebooks 04, 05, 06; claims C9, C8, C7).
    API: N_CONTROL, CONTROL_STREAM, control_sets, set_drops, against, heads_json, sets_digest
dla
    Attention vs MLP: direct logit attribution at the answer position, and the instruction-compliant subspace.
    API: DLAResult, dla
evaluate
    Behavioural evaluation on the world: accuracy per category with intervals.
    API: EVAL_CATEGORIES, category_samples, evaluate, quick_accuracy
flow_batches
    The batches the information-flow analyses run on: a ``Prepared``'s, or consecutive slices of a sample list.
    API: BatchFn, flow_batches, gather, subset_or_data
identification
    Identifying the heads that arbitrate between modalities: the top share by head score (notebook 03, C5).
    API: IDENTIFY_METHODS, Identification, identification_doc, identify_heads, load_identification,
         bootstrap_means, selection_stability, boundary_margin, score_intervals
information_flow
    Notebook 02 in one call: the failure search, every information-flow analysis, and its results document.
    API: SUBSETS, RESULTS_NAME, subset_masks, arbitration_failures, find_failures, FlowDocument,
         run_information_flow
knockout
    Attention-knockout sweeps: cut each edge in each window of k layers and record per-sample margins.
    API: default_window, windows, SweepResult, SWEEP_METHODS, knockout_sweep
lens
    Logit lens onto one answer direction, and the Latent Decision Agreement Rate (LDAR, ours).
    API: direction_rows, lens_diff, ldar, READS, RANDOM_GROUPS
mc2_eval
    MC2 with a model: which samples it can score, the paper's per-model filter, and MFR on MC2.
    API: scorable, filter_for_model, model_keep, evaluate_mc2
overlap
    Which prompts occur verbatim in the training stream of a model trained by ``study.train`` (amendment A6,
    C7).
    API: CRITERION, prompt_text, training_stream, in_training, overlap_summary
positions
    Where the instruction stands (notebook 08; C14, A8, A9): MFR per position and instruction with failure kinds,
    the instruction's effect between flipped-instruction twins, knockout curves and head scores per position,
    succeeded vs failed within a position's pool, margins with heads blocked.
    API: POSITION_EDGES, INSTRUCTIONS, scored_pass, behaviour, instruction_effect, effect_doc, mfr_difference,
         edge_present, position_knockout, position_heads, failure_curves, blocked_margins
results
    The results files: every result document and array file is written and read here, atomically; an absent
    measurement is null with its reason.
    API: jsonable, write_results, read_results, write_arrays, results_path, Document, OPTIONAL, absent, non_finite
retention
    Capability retention: accuracy per category with the identified heads blocked vs random sets (notebook 06,
    C7).
    API: RetentionResult, capability_experiment, ANSWER_IN_TEXT
saliency
    Information-flow saliency |A * dL/dA| per layer and token-group pair ("Label Words are Anchors", Wang et al.
    2023).
    API: saliency
scoring
    Head scores: how much the instructed margin drops when one head is blocked (C5, paper/METHOD.md).
    API: SCORE_METHODS, all_heads, Drops, exact_drops, head_scores_exhaustive, head_score_reference,
         head_scores_attribution, Attribution, head_attribution, FastScores, head_scores_fast
selection
    Choosing heads: the identified top share of a score table, random control sets, rank agreement.
    API: n_top, ranked, top_heads, rank_agreement, random_head_sets
splits
    The split manifest of notebook 01, filtered for a model: the entry point above the model-free data layer.
    API: write_manifest
stability
    Stability of the knockout curves under less data (claim C12), from a stored sweep (no model run).
    API: FRACTIONS, stability
train
    Training the embedded default model: a tiny Llava (CLIP vision tower + Llama decoder) on the world.
    API: TrainConfig, build_tiny_model, train
train_smol
    Training the pretrained-LM default: SmolLM2-135M-Instruct as the decoder of a Llava, in LLaVA's two stages.
    API: SmolTrainConfig, train_smol

Each module's docstring lists its public API with tensor shapes and a short example.
"""
