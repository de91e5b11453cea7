"""Prompt templates as data (``conf/prompt/*.yaml``): render a stage's chat messages.

The version that goes into every cache key is ``<prompt.version>:<hash of the stage's template>``, so
editing a template without bumping the version still never reuses answers to the old wording.
"""

from __future__ import annotations

import hashlib
import string

from exp3rt.config import ConfigError

STAGES = ("extract", "user_profile", "item_profile", "rationale", "consistency")


class _Strict(dict):
    def __init__(self, stage: str, part: str, values: dict):
        super().__init__(values)
        self.where = f"prompt.{stage}.{part}"

    def __missing__(self, key):
        raise ConfigError(f"{self.where} uses {{{key}}}, which this stage does not provide; available: {sorted(self)}")


def fmt_rating(value: float) -> str:
    return f"{value:g}"


class Prompts:
    def __init__(self, prompt_cfg, domain: str, scale_min: float, scale_max: float):
        self.cfg = prompt_cfg
        self.common = {
            "domain": domain,
            "domain_title": domain[:1].upper() + domain[1:],
            "scale_min": fmt_rating(scale_min),
            "scale_max": fmt_rating(scale_max),
        }
        self._versions = {}
        for stage in STAGES:
            tpl = prompt_cfg[stage]
            digest = hashlib.sha256(f"{tpl.system}\x00{tpl.user}".encode()).hexdigest()[:10]
            self._versions[stage] = f"{prompt_cfg.version}:{digest}"
            # fail at start-up, not after an hour of calls, when a template names an unknown field
            for part in ("system", "user"):
                for _, name, _, _ in string.Formatter().parse(tpl[part]):
                    if name is not None and not name.isidentifier():
                        raise ConfigError(f"prompt.{stage}.{part}: placeholder {{{name}}} is not a plain name")

    def version(self, stage: str) -> str:
        return self._versions[stage]

    def render(self, stage: str, **fields) -> tuple[tuple[str, str], ...]:
        tpl = self.cfg[stage]
        values = {**self.common, **{k: ("" if v is None else str(v)) for k, v in fields.items()}}
        system = tpl.system.format_map(_Strict(stage, "system", values))
        user = tpl.user.format_map(_Strict(stage, "user", values))
        return (("system", system), ("user", user))

    def repair(self, messages: tuple[tuple[str, str], ...], answer: str, problem: str) -> tuple[tuple[str, str], ...]:
        """The original conversation, the bad answer, and a request to answer again in form."""
        note = self.cfg.repair.format_map(_Strict("repair", "text", {"problem": problem}))
        return (*messages, ("assistant", answer), ("user", note))
