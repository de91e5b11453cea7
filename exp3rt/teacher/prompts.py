"""Prompt templates as data (``conf/prompt/*.yaml``): render a stage's chat messages.

The version that goes into every cache key is ``<prompt.version>:<hash of the stage's template>``, so
editing a template without bumping the version still never reuses answers to the old wording.
"""

from __future__ import annotations

from exp3rt.prompting import Strict as _Strict
from exp3rt.prompting import check_placeholders, fmt_rating, template_digest
from exp3rt.teacher.lexicon import lexicon_tag, load_lexicon

__all__ = ["STAGES", "Prompts", "fmt_rating"]

STAGES = ("extract", "user_profile", "item_profile", "rationale", "consistency")


class Prompts:
    def __init__(
        self, prompt_cfg, domain: str, scale_min: float, scale_max: float, loader: str | None = None
    ):
        self.cfg = prompt_cfg
        self.common = {
            "domain": domain,
            "domain_title": domain[:1].upper() + domain[1:],
            "scale_min": fmt_rating(scale_min),
            "scale_max": fmt_rating(scale_max),
        }
        self.rationale_form = str(prompt_cfg.get("rationale_form", "narrative"))
        self.profile_form = str(prompt_cfg.get("profile_form", "sentences"))
        # other name -> aspect name, applied to reviews by the extractive teacher (prompt.aspect_lexicon;
        # ``loader``: dataset.loader, for the synthetic world's own lexicon)
        self.aspect_lexicon = load_lexicon(prompt_cfg.get("aspect_lexicon"), domain, loader)
        self._versions = {}
        for stage in STAGES:
            tpl = prompt_cfg[stage]
            self._versions[stage] = f"{prompt_cfg.version}:{template_digest(tpl.system, tpl.user)}"
            if (
                stage == "rationale" and self.rationale_form != "narrative"
            ):  # narrative keeps its old versions (and caches)
                self._versions[stage] += f":{self.rationale_form}"
            if stage in ("user_profile", "item_profile") and self.profile_form != "sentences":
                self._versions[stage] += f":{self.profile_form}"  # sentences keeps its old versions
            if stage == "extract" and self.aspect_lexicon:  # without one: the old versions (and caches)
                self._versions[stage] += f":lexicon-{lexicon_tag(self.aspect_lexicon)}"
            # fail at start-up, not after an hour of calls, when a template names an unknown field
            for part in ("system", "user"):
                check_placeholders(tpl[part], f"prompt.{stage}.{part}")

    @classmethod
    def for_run(cls, cfg) -> Prompts:
        """The prompts of a run's composed config (``prompt``, ``dataset.domain``, ``dataset.scale``): the
        one place annotation, training and the pipeline build them."""
        return cls(
            cfg.prompt,
            str(cfg.dataset.domain),
            float(cfg.dataset.scale.min),
            float(cfg.dataset.scale.max),
            loader=cfg.dataset.get("loader"),
        )

    def version(self, stage: str) -> str:
        return self._versions[stage]

    def render(self, stage: str, **fields) -> tuple[tuple[str, str], ...]:
        tpl = self.cfg[stage]
        values = {**self.common, **{k: ("" if v is None else str(v)) for k, v in fields.items()}}
        system = tpl.system.format_map(_Strict(f"prompt.{stage}.system", values))
        user = tpl.user.format_map(_Strict(f"prompt.{stage}.user", values))
        return (("system", system), ("user", user))

    def repair(
        self, messages: tuple[tuple[str, str], ...], answer: str, problem: str
    ) -> tuple[tuple[str, str], ...]:
        """The original conversation, the bad answer, and a request to answer again in form."""
        note = self.cfg.repair.format_map(_Strict("prompt.repair.text", {"problem": problem}))
        return (*messages, ("assistant", answer), ("user", note))
