"""mfutils.measure: The measure layer: answers and candidate ids, margins and INSSD, the one ``follows`` path over one
``Prepared`` batch cache, and the statistics (intervals, bootstrap, p-values, relative drops).

Modules
-------
answers
    What counts as an answer: candidate token ids, targets per sample, and the answer-position logits.
    API: candidate_ids, FirstToken, first_tokens, first_token_ids, answer_tokens, Targets, targets_for,
         targets_from_candidates, UNSCORABLE_CAUSES, UnscorableError, CandidateOverlapError, answer_logits
follow
    Does the model follow the instruction? The one path for every MFR, failure search, readout and evaluation.
    API: Head, POSITIONS, check_heads, follows, scaled_logits, FlagCache
margins
    Measures on answer logits: the instructed margin, INSSD, flips, instructed wins.
    API: EPS, SMALL_MARGIN, margins, inssd, ratio_of_means, inssd_estimators, flips, instructed_wins
prefix
    Prefix reuse, checked: one clean forward per batch that interventions rerun from.
    API: PREFIX_REUSE, checked_trace, merge_status, merge_statuses
prepared
    Samples encoded once and reused across interventions, and the one batch loop that survives out of memory.
    API: Batch, Prepared, prepare, batches, n_batches, samples_of, per_batch, NOT_RUN, Fill
sequence
    Full-sequence candidate scoring: the teacher-forced log-probability of every token of each candidate answer.
    API: sequence_logprobs, side_words, sequence_margins
stats
    Intervals for every reported number.
    API: wilson, bootstrap_ci, summarize, proportion, rate, spread, relative_change, relative_drop,
         paired_bootstrap, empirical_p, null_summary

Each module's docstring lists its public API with tensor shapes and a short example.
"""
