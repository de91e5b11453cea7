"""The teacher: distils preference sets, profiles and rationales from reviews through any LLM."""
