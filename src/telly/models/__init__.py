"""Models: load any encoder (``loading``), freeze its bottom K layers (``freezing``, Telly-K),
extract layer-wise representations (``extraction``), and pre-train the small embedded code
model (``pretrain``, ``tokenizer``).

Import from the submodule that does the job (``from telly.models.loading import load_encoder``):
this package imports nothing itself, so a stage depends only on the model code it runs
(tests/test_dvc_deps.py). See docs/architecture.md ("Models API") and docs/models.md.
"""
