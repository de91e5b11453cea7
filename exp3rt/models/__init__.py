"""Model builders: a tiny random Llama for tests and the demo, SmolLM2 prepared from its wheel."""
