"""The student: SFT examples for every task (:mod:`.examples`), the rating text (:mod:`.ratings`) and
tokenisation with answer-only loss masks (:mod:`.tokenize`)."""
