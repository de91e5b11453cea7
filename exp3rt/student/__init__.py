"""The student's SFT data layer.

* :mod:`.ratings` — :class:`~.ratings.RatingTokens`: rating ↔ the text the student writes (configured
  offset, inverted before metrics) and the rating token ids, derived from the tokenizer.
* :mod:`.prompts` — :class:`~.prompts.StudentPrompts` over ``conf/student_prompt/*.yaml``.
* :mod:`.examples` — :func:`~.examples.build_examples`: ``SFTExample`` lists per split for the tasks
  extract / user_profile / item_profile / rating, ablations applied, skipped rows counted.
* :mod:`.tokenize` — :func:`~.tokenize.render` (chat template), :func:`~.tokenize.encode` (answer-only
  labels, input-side truncation), :func:`~.tokenize.build_dataset` (cached on disk) and
  :func:`~.tokenize.collate`.
"""
