"""mfutils.data: The data layer: prompts, samples, the synthetic world, the MC2 benchmark, split manifests.
Model-free: imports only mfutils.core.

Modules
-------
counterparts
    The single-modality versions of a conflict sample, for the world and for MC2 alike.
    API: counterparts
datasets
    Versioned datasets of a chain run: notebook 01 writes a manifest, later notebooks load and verify it.
    API: DEFAULT_SIZES, SMOKE_SIZES, write_split_manifest, load_split, DatasetMismatchError, manifest_path,
         manifest_dataset, DATASETS, MC2_SIZES, MIN_SPLIT_SAMPLES, SplitSizeWarning, SplitTooSmallError
mc2
    The MC2 modality-conflict benchmark (arXiv 2505.20977) as a dataset of the chain: records, COCO images,
    samples.
    API: MC2_FIELDS, FOLLOW_IMAGE, FOLLOW_TEXT, CONSTRAINT_OPEN, CONSTRAINT_MC, SYSTEM_SENTENCE, MC2FormatError,
         MissingImagesError, load_records, find_images, file_sha256, candidate_list, record_samples,
         counterparts_mc2, Keep, build_splits, split_samples, SPLIT_SEED, read_records, instructions_of
mc2_files
    MC2 record files in either of their two published formats, told apart by their fields.
    API: MC2_FIELDS, AUTHORS_FIELDS, FORMATS, QUESTION_FORMS, MODEL_FILTER_DEFAULT, MC2FormatError,
         UnusedFieldsWarning, SharedWordsWarning, detect_format, read_records, load_records, file_format,
         validate_mc2, validate_authors, instructed_of, side_candidates, case_forms, file_sha256
prompts
    The prompt representation shared by the world, the token groups and the analyses.
    API: Prompt, GROUP_NAMES, SEGMENT_NAMES
sample
    The sample type shared by the synthetic world and MC2, and the checksum that identifies a list of samples.
    API: Sample, CONFLICT_CATEGORIES, dataset_checksum
world
    The synthetic modality-conflict world: rendered objects, text contexts, instructions.
    API: COLORS, SHAPES, ATTRIBUTES, CATEGORIES, VARIANTS, TRAIN_MIX, INSTRUCTION_TEMPLATES, HELDOUT_TEMPLATES,
         make_sample, make_samples, vocabulary, render_image, IMAGE_SIZE, TRAIN_SEED, HELDOUT_SEEDS, SPLITS,
         make_split, DATASET_VERSION, VARIANT_MIX, counterparts_world

Each module's docstring lists its public API with tensor shapes and a short example.
"""
