"""The student: SFT data (ratings, prompts, examples, tokenize), the model with peft, the Lightning
module and data module, training strategies and the training run.

* :mod:`.ratings` — rating ↔ the text the student writes (configured offset, inverted before metrics).
* :mod:`.examples` — SFT examples for extract / user_profile / item_profile / rating, ablations applied.
* :mod:`.tokenize` — chat rendering, answer-only labels, input-side truncation, cached datasets.
* :mod:`.model`, :mod:`.lightning`, :mod:`.strategies`, :mod:`.train` — the training run.
"""
