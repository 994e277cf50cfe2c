"""Models by name: what a user may type for a model, where it is on disk, how to fetch, check and size it.

One resolver (``resolve.py``) for every face; the Hugging Face cache and downloads through huggingface_hub
(``hub.py``); the list every face shows (``listing.py``); checks before a load (``verify.py``, ``fit.py``);
a config summary (``summary.py``). Below the backends, above the model and the engine.
"""
