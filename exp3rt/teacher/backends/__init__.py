"""Teacher backends: ``openai`` (any OpenAI-compatible server), ``hf`` (in-process transformers),
``extractive`` (no LLM: a deterministic lexicon-based annotator). See :mod:`.base` for the contract."""
