"""mfutils.core: The floor: where files live (repository and output folders, atomic writes), provenance, seeding,
and which of several cooperating processes this one is. Nothing here knows about models or data.

Modules
-------
paths
    Where things live in the repository, resolved from the package location, never from the cwd.
    API: repo_root, output_root, checkpoint_dir, figures_dir, results_dir, model_slug, notebooks_dir,
         display_path, atomic_output, atomic_write_text, atomic_write_bytes
processes
    Processes: which of N cooperating processes this one is, which share of the work is its own, and how the
    shares are put back together (torch.distributed, gloo backend).
    API: World, world, is_main, share, gather_items, gather_rows, barrier, in_lockstep, coordinate_only, leave,
         ProcessGroupError, TIMEOUT_ENV
provenance
    Provenance: what code, packages and machine produced a result.
    API: git_commit, sha256_file, environment
seed
    Seeding: one call makes a run repeatable.
    API: seed_everything

Each module's docstring lists its public API with tensor shapes and a short example.
"""
