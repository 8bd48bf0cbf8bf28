"""mfutils.run: The run layer: the papermill notebook chain, its state (fingerprints, resume, provenance) and the ``mf`` CLI.

Modules
-------
args
    Range checks of numbers from the user: the ``mf`` options' argparse types and the chain's ``-p`` parameters.
    API: count, seed, share, alpha, PARAMETER_KINDS, parameter_problem
chain
    The notebook chain: run ``notebooks/NN_*.ipynb`` in order with papermill; resumable, checked, traceable.
    API: PLANNED, built_notebooks, describe_chain, run_chain, kernel_name, notebook_parameters, check_parameters,
         parse_parameter, ChainParameterError
cli
    The command line: ``python -m mfutils <command>`` (also installed as ``mf``). The Makefile is a thin front.
    API: main, build_parser
outputs
    Where a chain run writes: its run key (the folders of any run but the shipped chain), where a notebook executes
    and where a failed execution is kept, and the checked outputs that nbval compares.
    API: built_notebooks, run_key_for, executed_paths, store_checked_outputs
parallel
    Many processes: start a group of workers from a notebook or for the chain.
    API: in_processes, rank_device, launch_argv, kernel_env, free_port, primary_error, RankError
profiles
    Per-model chain parameters: the sample counts and windows each shipped model's full run uses.
    API: PROFILES, SHIPPED_ORDER, profile
state
    The chain's records: notebook fingerprints, the resume state, output hashes and provenance stamps.
    API: STATE_FILE, PROVENANCE_FILE, BOOKKEEPING, INTERACTIVE_MODULES, fingerprint, code_fingerprint,
         interactive_uses, model_identity, dataset_identity, strip_provenance, snapshot, new_state, read_state,
         outputs_intact, stamp_outputs, relative_metadata, write_provenance_index

Each module's docstring lists its public API with tensor shapes and a short example.
"""
