"""mfutils.core: The floor: where files live (repository and output folders, atomic writes), provenance, seeding.
Nothing here knows about models or data.

Modules
-------
paths            Where things live in the repository, resolved from the package location, never from the cwd.
provenance       Provenance: what code, packages and machine produced a result.
seed             Seeding: one call makes a run repeatable.

Each module's docstring lists its public API with shapes and a short example.
"""
