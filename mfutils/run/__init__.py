"""mfutils.run: The run layer: the papermill notebook chain, its state (fingerprints, resume, provenance) and the ``mf`` CLI.

Modules
-------
chain            The notebook chain: run ``notebooks/NN_*.ipynb`` in order with papermill; resumable, checked, traceable.
cli              The command line: ``python -m mfutils <command>`` (also installed as ``mf``). The Makefile is a thin front.
state            The chain's records: notebook fingerprints, the resume state, output hashes and provenance stamps.

Each module's docstring lists its public API with shapes and a short example.
"""
