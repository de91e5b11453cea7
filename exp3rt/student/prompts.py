"""The student's prompt file (``conf/student_prompt/*.yaml``): render each SFT task's messages.

Rendering is strict (a placeholder the task does not provide is an error naming the template) and
records where the long inputs (reviews, preference sets, profiles, descriptions) land in the user
message, so truncation can shorten those and never the instructions. The version in every cache key is
``<version>:<hash of all templates>``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import RATING_SECTIONS, ConfigError, StudentPromptConf, section_order
from exp3rt.prompting import Spanned, check_placeholders, render_spans, template_digest
from exp3rt.student.ratings import RatingTokens

GENERATION_TASKS = ("extract", "user_profile", "item_profile")
#: fields whose text may be shortened (middle cut) when an example is too long
CUT_FIELDS = frozenset({"review", "preference_sets", *RATING_SECTIONS})


def load_student_prompt(name: str = "exp3rt_v1") -> DictConfig:
    """A prompt file from ``conf/student_prompt/`` merged onto its schema (outside a Hydra run)."""
    path = Path(CONF_DIR) / "student_prompt" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"student prompt {path} does not exist; available: "
            f"{sorted(p.stem for p in path.parent.glob('*.yaml'))}"
        )
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(StudentPromptConf), node)


class StudentPrompts:
    def __init__(self, prompt_cfg, domain: str, ratings: RatingTokens):
        self.cfg = prompt_cfg
        self.ratings = ratings
        self.common = {
            "domain": domain,
            "domain_title": domain[:1].upper() + domain[1:],
            # the scale as the student writes it (after the configured offset)
            "scale_min": ratings.texts[0],
            "scale_max": ratings.texts[-1],
        }
        texts = []
        for task in GENERATION_TASKS:
            for part in ("system", "user"):
                check_placeholders(prompt_cfg[task][part], f"student_prompt.{task}.{part}")
                texts.append(prompt_cfg[task][part])
        rating = prompt_cfg.rating
        for part in (
            "system",
            "user",
            "instruction",
            "instruction_rating_only",
            "raw_review",
            "answer",
            "answer_rating_only",
        ):
            check_placeholders(rating[part], f"student_prompt.rating.{part}")
            texts.append(rating[part])
        missing = [s for s in RATING_SECTIONS if s not in rating.sections]
        if missing:
            raise ConfigError(
                f"student_prompt.rating.sections lacks {missing}; it needs one template each for "
                f"{list(RATING_SECTIONS)}"
            )
        for name in rating.sections:
            if name not in RATING_SECTIONS:
                raise ConfigError(
                    f"student_prompt.rating.sections.{name} is unknown; allowed: {list(RATING_SECTIONS)}"
                )
            check_placeholders(rating.sections[name], f"student_prompt.rating.sections.{name}")
            texts.append(f"{name}={rating.sections[name]}")
        self.section_order = section_order(rating)
        if rating.get("section_order"):  # an explicit order is part of the version (the default adds nothing)
            texts.append("section_order=" + ",".join(self.section_order))
        only = rating.answer_rating_only
        if not only.endswith("{rating}") or check_placeholders(
            only, "student_prompt.rating.answer_rating_only"
        ) != ["rating"]:
            raise ConfigError(
                "student_prompt.rating.answer_rating_only must end with {rating} and hold no other "
                "placeholder: "
                "the text before it is where the rating is read from"
            )
        if not rating.answer.endswith(only):
            raise ConfigError(
                f"student_prompt.rating.answer must end with answer_rating_only ({only!r}), so the "
                "readout finds the "
                "rating after the same prefix with and without reasoning"
            )
        texts += [rating.section_separator, rating.no_reviews, prompt_cfg.set_separator]
        self.version = f"{prompt_cfg.version}:{template_digest(*texts)}"
        self.rating_prefix = only[: -len("{rating}")]

    @property
    def set_separator(self) -> str:
        return self.cfg.set_separator

    def _values(self, fields: dict) -> dict:
        return {**self.common, **fields}

    def messages(self, task: str, **fields) -> tuple[str, Spanned]:
        """(system text, user message with the spans of its long inputs) for a generation task."""
        tpl = self.cfg[task]
        values = self._values(fields)
        system = render_spans(tpl.system, values, f"student_prompt.{task}.system").text
        return system, render_spans(tpl.user, values, f"student_prompt.{task}.user", CUT_FIELDS)

    def rating_messages(self, sections: dict[str, str], reasoning: bool) -> tuple[str, Spanned]:
        """The rating prompt: the given sections (in ``section_order``) and the instruction."""
        tpl = self.cfg.rating
        unknown = [s for s in sections if s not in RATING_SECTIONS]
        if unknown:
            raise ValueError(f"unknown rating prompt sections {unknown}; allowed: {list(RATING_SECTIONS)}")
        values = self._values({})
        parts = [
            render_spans(
                tpl.sections[name],
                {**values, name: sections[name]},
                f"student_prompt.rating.sections.{name}",
                CUT_FIELDS,
            )
            for name in self.section_order
            if name in sections
        ]
        context = _join(parts, tpl.section_separator)
        instruction = render_spans(
            tpl.instruction if reasoning else tpl.instruction_rating_only,
            values,
            "student_prompt.rating.instruction",
        ).text
        system = render_spans(tpl.system, values, "student_prompt.rating.system").text
        user = render_spans(
            tpl.user, {**values, "context": context, "instruction": instruction}, "student_prompt.rating.user"
        )
        return system, user

    def raw_review(self, summary: str, review: str) -> str:
        return render_spans(
            self.cfg.rating.raw_review,
            self._values({"summary": summary, "review": review}),
            "student_prompt.rating.raw_review",
        ).text

    @property
    def no_reviews(self) -> str:
        return self.cfg.rating.no_reviews

    def answer(self, rating: float, rationale: str | None = None) -> str:
        """``Reasoning: <rationale>\\nPredicted User Rating: <r>``, or the rating line alone without a
        rationale."""
        values = self._values({"rating": self.ratings.to_text(rating)})
        if rationale is None:
            return render_spans(
                self.cfg.rating.answer_rating_only, values, "student_prompt.rating.answer_rating_only"
            ).text
        return render_spans(
            self.cfg.rating.answer, {**values, "rationale": rationale.strip()}, "student_prompt.rating.answer"
        ).text


def _join(parts: list[Spanned], separator: str) -> Spanned:
    text, spans, pos = [], [], 0
    for i, part in enumerate(parts):
        if i:
            text.append(separator)
            pos += len(separator)
        spans += [(pos + a, pos + b) for a, b in part.spans]
        text.append(part.text)
        pos += len(part.text)
    return Spanned("".join(text), tuple(spans))
