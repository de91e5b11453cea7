"""``extractive``: a deterministic, lexicon-based teacher — a baseline, not an LLM.

It answers every stage from the request's structured ``payload`` (the chat ``messages`` are ignored),
so the whole pipeline can run with no model at all: for comparisons (how much does an LLM teacher add
over lexicon extraction?), for the demo and for tests. Same payload, same answer, always.

* ``extract``: the review is split into sentences and clauses (at ``but``/``although``/``;`` …);
  each clause is scored with VADER's lexicon plus a small review-domain supplement (VADER misses most
  review adjectives: "predictable", "wooden", "clunky", "gripping" …, and gives aspect nouns such as
  "romance" or "humour" a valence of their own). A clause that carries no subject of its own
  ("I was hoping for more") lends its polarity to its neighbour. Positive clauses become ``[Like]``
  bullets, negative ones ``[Dislike]`` bullets, condensed by stripping filler ("I think",
  "Honestly,", "What stood out most was that", ", which ruined it for me" …) and capping the length.
  Every bullet is a verbatim substring of the review (only its first letter is upper-cased), so the
  set never holds anything the review does not say. At most five bullets a side; ``None.`` if empty.
* ``user_profile`` / ``item_profile``: bullets of all sets are normalised and grouped by their key
  terms (content words that are not sentiment words); the most frequent terms win, each represented
  by its most common bullet; at most ``max_bullets`` a side.
* ``rationale``: template sentences pairing the user's likes/dislikes with the item profile's bullets
  by token overlap, and an overall lean set by the rating's position on the scale — the rating itself
  (and any digit) never appears.
* ``consistency``: reads the lean back (or, for a free-form rationale, its VADER polarity) and maps it
  onto the scale: ``Rating: <number>``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from exp3rt.teacher.backends.base import ChatRequest, ChatResponse, PermanentError
from exp3rt.teacher.lexicon import name_aspects

MAX_BULLETS = 5
MAX_BULLET_WORDS = 12
POLARITY_THRESHOLD = 0.05  # |compound| below this is neutral (VADER's own convention)

# Review vocabulary VADER lacks (valence on VADER's -4..4 scale), and aspect nouns whose own valence
# would otherwise decide the clause ("the romance was cheesy" scores positive in plain VADER).
# fmt: off
LEXICON_SUPPLEMENT: dict[str, float] = {
    # negative
    "predictable": -1.5, "wooden": -1.6, "stiff": -1.2, "unconvincing": -1.6, "cheap": -1.2,
    "forgettable": -1.5, "intrusive": -1.2, "loud": -0.8, "cringeworthy": -2.0, "cringe-inducing": -2.0,
    "juvenile": -1.2, "tired": -1.0, "cheesy": -1.4, "incoherent": -1.8, "clunky": -1.5,
    "stilted": -1.5, "rushed": -1.4, "letdown": -2.0, "one-dimensional": -1.5, "thinly": -1.2,
    "inconsistent": -1.3, "flat": -1.3, "overwrought": -1.4, "clumsy": -1.5, "slog": -1.8,
    "cardboard": -1.2, "thin": -1.0, "generic": -1.2, "uneven": -1.3, "nowhere": -1.0,
    "cop-out": -1.8, "forced": -1.5, "grating": -1.6, "insta-love": -1.0, "nonsense": -1.8,
    "heavy-handed": -1.5, "shallow": -1.5, "preachy": -1.5, "sloppy": -1.8, "flimsy": -1.6,
    "plasticky": -1.4, "shoddy": -2.0, "drains": -1.2, "dies": -1.4, "rip-off": -2.2,
    "dated": -1.2, "nightmare": -2.2, "underwhelming": -1.8, "unhelpful": -1.8, "headache": -1.6,
    "forever": -0.6, "needlessly": -1.2, "complicated": -1.0, "annoyingly": -1.6, "unbearable": -2.4,
    "bulky": -1.2, "baffling": -1.5, "second-rate": -1.8, "patchy": -1.4, "unreliable": -1.8,
    "erratic": -1.5, "slow": -1.0, "lacking": -1.4, "gimmicky": -1.4, "half-baked": -1.8,
    "uncomfortable": -1.6, "rough": -1.0, "paper-thin": -1.5, "dragged": -1.5, "drags": -1.5,
    "gripe": -1.8, "peeve": -1.6, "complaint": -1.5, "overpriced": -1.8, "bland": -1.5,
    "mediocre": -1.5, "overlong": -1.3, "tedious": -1.8, "confusing": -1.4, "broke": -1.6,
    "unnatural": -1.3, "meh": -1.0,
    # positive
    "gripping": 1.8, "highlight": 1.8, "memorable": 1.6, "haunting": 1.2, "tight": 1.0, "blast": 1.8,
    "sharp": 1.2,
    "witty": 1.8, "immersive": 1.8, "lyrical": 1.5, "effortlessly": 1.4, "believable": 1.4,
    "unforgettable": 2.0, "detailed": 1.0, "page-turner": 1.8, "ingeniously": 2.0, "thought-provoking": 1.8,
    "profound": 1.8, "meticulous": 1.6, "authentic": 1.4, "top-notch": 2.2, "reasonable": 1.0,
    "sleek": 1.5, "modern": 0.6, "intuitive": 1.6, "blazing": 1.4, "breeze": 1.6, "first-rate": 2.0,
    "effortless": 1.6, "dependable": 1.6, "prompt": 1.0, "gem": 2.4, "moving": 1.4, "rich": 1.2,
    "clever": 1.6, "cleverly": 1.6, "vivid": 1.5, "complex": 0.6, "sturdy": 1.5, "quiet": 0.6,
    # aspect nouns: neutral as subjects
    "romance": 0.0, "humour": 0.0, "humor": 0.0, "comfort": 0.0, "value": 0.0, "villain": 0.0,
}
# Multi-word cues VADER cannot see word by word (valence added to the clause's raw VADER sum).
PHRASE_CUES: dict[str, float] = {
    "kept me guessing": 1.8, "from start to finish": 0.8, "stuck in my head": 1.2,
    "never let up": 1.8, "pulled me right in": 1.8, "drew me right in": 1.8, "blew me away": 2.4,
    "felt real": 1.4, "left me stunned": 1.8, "stayed with me": 1.6, "easy to root for": 1.6,
    "hard to beat": 1.8, "dead simple": 4.5, "more than enough": 1.4, "just right": 1.4,
    "barely noticeable": 1.2, "whisper quiet": 1.4, "takes minutes": 0.8, "never dragged": 1.6,
    "could not put it down": 2.0, "couldn't put it down": 2.0, "worth every": 1.8,
    "full of holes": -1.8, "made little sense": -1.8, "all over the place": -1.6, "fell flat": -1.8,
    "zero chemistry": -1.8, "hard to care about": -1.6, "impossible to like": -1.8,
    "never settled": -1.2, "never came together": -1.4, "went nowhere": -1.4, "fell apart": -1.8,
    "far too": -1.4, "way over the top": -1.6, "impossible to reach": -1.8, "within a few hours": -0.8,
    "hoping for more": -1.8, "expected more": -1.8, "expected a lot more": -1.8, "let down": -1.6,
    "waste of": -1.6, "can't stand": -2.0, "cannot stand": -2.0, "not worth": -1.6,
}
# fmt: on
# ``love story`` is a noun ("the love story was cheesy"); scoring sees it as ``story``.
_NEUTRALISE = (("love story", "story"),)

# Leading filler removed from a bullet (case-insensitive, repeated until none applies).
_LEAD_FILLER = re.compile(
    r"^(?:and|but|so|also|overall|honestly|frankly|personally|sadly|unfortunately|thankfully|"
    r"luckily|fortunately|at least|to be honest|in my opinion|for me|of course|"
    r"i (?:really |truly )?(?:think|feel|felt|thought|found|believe|guess|loved how|liked how|"
    r"love how|like how|hated how|disliked how)(?: that)?|"
    r"what stood out (?:most )?(?:was|is)(?: that)?|the best (?:part|thing) (?:was|is)(?: that)?|"
    r"the worst (?:part|thing) (?:was|is)(?: that)?|"
    r"my (?:main|biggest|only|one) (?:gripe|complaint|issue|problem)(?: (?:was|is))?(?: that)?)"
    r"\s*[,:]?\s+",
    re.IGNORECASE,
)
# Trailing commentary cut from a bullet (its polarity still counts, from the whole clause).
_TRAIL = re.compile(
    r",?\s+(?:which|and that|and this|something|that alone|because|as)\b.*$|,\s*(?:which|something)\b.*$",
    re.IGNORECASE,
)
# Where a sentence splits into clauses of their own polarity.
_CLAUSE_SPLIT = re.compile(
    r"\s*;\s*|\s*,?\s+(?:but|although|though|however|whereas|yet|while)\s+|\s*,\s*(?:but|however)\s*,?\s*",
    re.IGNORECASE,
)
# Hedged, neutral remarks ("The comedy was fine, I suppose") are not preferences.
_HEDGE = re.compile(
    r"\b(?:i suppose|i guess|neither here nor there|about what you(?:'d| would)? expect|"
    r"didn't pay much attention|did not pay much attention|nothing special|no complaints either way)\b",
    re.IGNORECASE,
)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z][a-z'\-]*")

STOPWORDS = frozenset(
    """a an the and or but so of to in on at for with from by as is was were are be been being it its
    this that these those i me my we our you your he she they them their his her there here than then
    too very really quite just also not no never more most much many some any all one ones had has have
    did do does felt feel feels seem seemed seems looked look looks got get gets made make makes kept
    what which who how when where why overall thing things way lot bit about into over up down out only
    even still again ever would could should will can may might must""".split()
)
# Nouns that name the item itself or the verdict, not an aspect of it.
GENERIC_TERMS = frozenset(
    """movie film book novel product item story read watch time money one anyone everyone someone
    complete absolute total real highly recommend recommended recommendation opinion experience
    worth expected hoping""".split()
)


# A clause opening with these speaks of the reviewer or the whole item, not an aspect:
# "I was hoping for more", "It was okay overall", "A complete waste of time", "My friends had …".
_NO_SUBJECT = frozenset(
    (
        "i i'm i've i'd we it it's this that a an not avoid one my here there nothing everything just quick"
    ).split()
)


class ExtractiveBackend:
    """A deterministic teacher that reads the payload; see the module docstring."""

    name = "extractive"

    def __init__(self, cfg: Any = None):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.model = str(getattr(cfg, "model", None) or "vader-lexicon")
        self._vader = SentimentIntensityAnalyzer()
        # the analyzer holds its own dict: updating it leaves other analyzers untouched
        self._vader.lexicon = {**self._vader.lexicon, **LEXICON_SUPPLEMENT}

    # --- protocol ---------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        return self.answer(request)

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        return [self.answer(r) for r in requests]

    def count_tokens(self, text: str) -> int:
        return int(math.ceil(len(text.split()) * 1.3))

    async def aclose(self) -> None:
        return None

    def answer(self, request: ChatRequest) -> ChatResponse:
        p = request.payload
        try:
            if request.stage == "extract":
                text = self.extract(p["review"], p.get("summary"), p.get("aspect_lexicon"))
            elif request.stage in ("user_profile", "item_profile"):
                text = self.profile(
                    p["preference_sets"], int(p.get("max_bullets", MAX_BULLETS)), p.get("form") or "sentences"
                )
            elif request.stage == "rationale":
                text = self.rationale(
                    float(p["rating"]),
                    tuple(p["scale"]),
                    p.get("user_profile", ""),
                    p.get("item_profile", ""),
                    p.get("item_description", "") or "",
                    p.get("domain", "item") or "item",
                    p.get("form", "narrative") or "narrative",
                )
            elif request.stage == "consistency":
                text = f"Rating: {_fmt(self.consistency(p['rationale'], tuple(p['scale'])))}"
            else:
                raise PermanentError(f"extractive backend: unknown stage '{request.stage}'")
        except KeyError as e:
            raise PermanentError(
                f"extractive backend: stage '{request.stage}' needs payload key {e}; "
                f"the stage must send its structured inputs in ChatRequest.payload"
            ) from None
        prompt = "\n".join(c for _, c in request.messages)
        return ChatResponse(
            text=text,
            prompt_tokens=self.count_tokens(prompt),
            completion_tokens=self.count_tokens(text),
            model=self.model,
            finish_reason="stop",
        )

    # --- scoring ----------------------------------------------------------------------------------
    def polarity(self, text: str) -> float:
        """VADER compound of ``text`` with the supplement and the multi-word cues, in [-1, 1]."""
        low = text.lower()
        for a, b in _NEUTRALISE:
            low = low.replace(a, b)
        c = self._vader.polarity_scores(low)["compound"]
        extra = sum(v for k, v in PHRASE_CUES.items() if k in low)
        if extra == 0.0:
            return c
        c = max(-0.9999, min(0.9999, c))
        raw = c * math.sqrt(15.0 / (1.0 - c * c))  # invert VADER's normalisation x / sqrt(x² + 15)
        raw += extra
        return raw / math.sqrt(raw * raw + 15.0)

    # --- extract ----------------------------------------------------------------------------------
    def clauses(self, review: str) -> list[tuple[str, float]]:
        """(bullet, polarity) for each clause of the review that carries an aspect; bullets are
        verbatim substrings of ``review``."""
        out: list[tuple[str, float]] = []
        for sent in _SENT_SPLIT.split(review.strip()):
            sent = sent.strip()
            if not sent or _HEDGE.search(sent):
                continue
            parts = [s for s in _CLAUSE_SPLIT.split(sent) if s and s.strip()]
            scored = []
            for part in parts:
                core = _condense(part)
                scored.append((core, self.polarity(part), _has_subject(core)))
            whole = self.polarity(sent)
            for i, (core, pol, has_subject) in enumerate(scored):
                if not has_subject:
                    continue
                if abs(pol) < POLARITY_THRESHOLD:
                    # a subject-less neighbour ("I was hoping for more, but …") lends its polarity
                    lend = [
                        p
                        for c, p, s in scored[max(0, i - 1) : i + 2]
                        if not s and abs(p) >= POLARITY_THRESHOLD
                    ]
                    pol = lend[0] if lend else (whole if len(scored) == 1 else 0.0)
                if abs(pol) >= POLARITY_THRESHOLD:
                    out.append((core, pol))
        return out

    def extract(self, review: str, summary: str | None = None, lexicon: dict | None = None) -> str:
        """The review's likes and dislikes, one clause each; ``lexicon`` (``{other name: aspect}``,
        prompt.aspect_lexicon) first writes every aspect by its own name."""
        review = name_aspects(review, lexicon or {})
        likes: list[str] = []
        dislikes: list[str] = []
        seen: set[str] = set()
        for core, pol in self.clauses(review):
            key = _norm(core)
            if key in seen:
                continue
            seen.add(key)
            (likes if pol > 0 else dislikes).append(core)
        # strongest first would reorder the review; keep the review's order, cap per side
        return format_preferences(likes[:MAX_BULLETS], dislikes[:MAX_BULLETS])

    # --- profiles ---------------------------------------------------------------------------------
    def profile(
        self, preference_sets: list[str], max_bullets: int = MAX_BULLETS, form: str = "sentences"
    ) -> str:
        """The most recurrent likes and dislikes across ``preference_sets``: a representative bullet each
        (``sentences``), or only the aspect term that groups them (``aspects``: "pacing")."""
        likes: list[str] = []
        dislikes: list[str] = []
        for s in preference_sets:
            like, dislike = parse_preferences(s)
            likes += like
            dislikes += dislike
        side = 1 if form == "aspects" else 0
        return format_preferences(
            *([c[side] for c in _summarise(xs, max_bullets)] for xs in (likes, dislikes))
        )

    # --- rationale --------------------------------------------------------------------------------
    def rationale(
        self,
        rating: float,
        scale: tuple[float, float],
        user_profile: str,
        item_profile: str,
        item_description: str,
        domain: str,
        form: str = "narrative",
    ) -> str:
        lo, hi = float(scale[0]), float(scale[1])
        if form in ("compact", "scored"):
            return self.compact_rationale(
                user_profile, item_profile, domain, (lo, hi) if form == "scored" else None
            )
        band = lean_band((rating - lo) / (hi - lo) if hi > lo else 0.5)
        u_like, u_dis = (_clean_list(x) for x in parse_preferences(user_profile))
        i_like, i_dis = (_clean_list(x) for x in parse_preferences(item_profile))
        noun = domain or "item"
        sents: list[str] = []
        if u_like or u_dis:
            bits = []
            if u_like:
                bits.append(f"has enjoyed it when {_join(_lc(u_like[:2]))}")
            if u_dis:
                bits.append(f"has been put off when {_join(_lc(u_dis[:2]))}")
            sents.append(f"This user {', and '.join(bits)}.")
        else:
            sents.append("This user's profile states few clear preferences.")
        good = _pairs(u_like, i_like, "match") + _pairs(u_dis, i_like, "relief")
        bad = _pairs(u_like, i_dis, "miss") + _pairs(u_dis, i_dis, "peeve")
        # the side that drives the lean leads (two sentences at most), the other side is conceded once
        if band >= 2:
            lead, other, concede = good, bad, "That said"
        else:
            lead, other, concede = bad, good, "Admittedly"
        body = [_pair_sentence(u, i, tag, noun) for u, i, tag in lead[:2]]
        if len(lead) < 2:  # name one more of the item's traits on the driving side, unpaired
            side = i_like if band >= 2 else i_dis
            rest = [b for b in side if b not in {i for _, i, _ in lead}]
            if rest:
                verb = "also praise" if band >= 2 else "also point out"
                body.append(f"Reviewers {verb} that {_lc1(rest[0])}.")
        body += [f"{concede}, {_pair_sentence(u, i, tag, noun, lower=True)}" for u, i, tag in other[:1]]
        sents += body
        if not body:
            if i_like:
                sents.append(f"Reviewers of this {noun} mostly praise that {_lc1(i_like[0])}.")
            if i_dis:
                sents.append(f"Their main complaint is that {_lc1(i_dis[0])}.")
        desc = _first_sentence(item_description)
        if desc and len(sents) < 4:
            sents.append(f"The description presents it as follows: {desc}")
        sents.append(LEANS[band].format(noun=noun))
        return " ".join(sents)

    def compact_rationale(
        self,
        user_profile: str,
        item_profile: str,
        domain: str,
        estimate_scale: tuple[float, float] | None = None,
    ) -> str:
        """The overlaps between the two profiles in a fixed order, named by the aspect words they share,
        then both averages: what the rating follows from, computable from the student's prompt alone
        (the rating is not used, so the reasoning never leans towards an answer it could not know). With
        ``estimate_scale`` (the ``scored`` form), then an estimate computed from those: :func:`estimate`."""
        u_like, u_dis = (_clean_list(x) for x in parse_preferences(user_profile))
        i_like, i_dis = (_clean_list(x) for x in parse_preferences(item_profile))
        named = [
            _names(_pairs(users, items, ""))
            for users, items in ((u_like, i_like), (u_like, i_dis), (u_dis, i_dis), (u_dis, i_like))
        ]
        parts = [f"{label}: {names}." for label, names in zip(COMPACT_LISTS, named, strict=True)]
        found = [
            (who, a)
            for who, a in (("user", _average(user_profile)), (domain or "item", _average(item_profile)))
            if a
        ]
        if found:
            parts.append(f"Averages: {', '.join(f'{who} {a}' for who, a in found)}.")
        if estimate_scale is not None:
            counts = [0 if names == "none" else len(names.split(", ")) for names in named[:3]]
            value = estimate(*counts, [float(a) for _, a in found], estimate_scale)
            parts.append(f"Estimate: {value:.1f}.")
        return " ".join(parts)

    # --- consistency ------------------------------------------------------------------------------
    def consistency(self, rationale: str, scale: tuple[float, float]) -> float:
        lo, hi = float(scale[0]), float(scale[1])
        band = None
        for b, lean in enumerate(LEANS):
            head = lean.split("{noun}")[0].split(",", 2)[1].strip()  # the words after "Overall,"
            if head.lower() in rationale.lower():
                band = b
        if band is not None:
            frac = band / (len(LEANS) - 1)
        else:  # a free-form rationale: its polarity, linearly onto the scale
            frac = (self.polarity(rationale) + 1.0) / 2.0
        value = lo + frac * (hi - lo)
        if float(lo).is_integer() and float(hi).is_integer():
            value = float(round(value))
        return min(hi, max(lo, value))


# the compact rationale's four lists, in the order it writes them
COMPACT_LISTS = ("Likes it meets", "Likes it misses", "Dislikes it triggers", "Dislikes it avoids")
_COMPACT_LIST = re.compile(rf"({'|'.join(COMPACT_LISTS)}): ([^.]*)\.")


def compact_counts(text: str) -> list[int]:
    """How many aspects each of a compact rationale's four lists names ("none" and a missing list: 0)."""
    named = dict(_COMPACT_LIST.findall(text or ""))
    return [0 if named.get(k, "none").strip() == "none" else len(named[k].split(", ")) for k in COMPACT_LISTS]


def estimate(
    met: int, missed: int, triggered: int, averages: list[float], scale: tuple[float, float]
) -> float:
    """The ``scored`` rationale's closing number: the user's average (the item's without one, the scale's
    middle without either), plus 1/16 of the scale's span per like the item meets (0.25 on 1–5), minus as
    much per like it misses, minus 1/8 of the span per dislike it triggers; within the scale, to one
    decimal. ``averages`` lists the user's first when both are there. It starts from a number the student
    copies from its prompt and adds quarter steps, arithmetic a small model can learn (the mean of the two
    averages, tried first, it could not), and scores as well on the synthetic world's training pairs
    (RMSE 1.002 against 1.000; docs/teacher.md). Round weights near a least-squares fit there, simple enough
    for an LLM teacher to follow from its prompt."""
    lo, hi = float(scale[0]), float(scale[1])
    base = averages[0] if averages else (lo + hi) / 2
    value = base + (hi - lo) / 4 * (0.25 * met - 0.25 * missed - 0.5 * triggered)
    return math.floor(min(hi, max(lo, value)) * 10 + 0.5) / 10


_ESTIMATE = re.compile(r"Estimate: (\d+(?:\.\d+)?)")


def read_scored(text: str, domain: str) -> tuple[list[int], list[float], float] | None:
    """What a ``scored`` rationale says, or None without an estimate: the counts of the three lists
    :func:`estimate` reads (met, missed, triggered), the averages it names (the user's first; the item's
    is labelled with ``domain``, "item" without one) and the estimate it wrote (its last)."""
    said = _ESTIMATE.findall(text or "")
    if not said:
        return None
    label = re.escape(domain or "item")
    found = dict(re.findall(rf"\b(user|{label}) (\d+(?:\.\d+)?)[,.]", text))
    averages = [float(found[k]) for k in ("user", domain or "item") if k in found]
    return compact_counts(text)[:3], averages, float(said[-1])


def recompute_estimate(text: str, domain: str, scale: tuple[float, float]) -> str:
    """``text`` with its (last) estimate replaced by :func:`estimate` of the lists and averages the text
    itself names: the scored rationale's sum done exactly, as a calculator would (``eval.compute_estimate``).
    The lists and averages are the writer's own; nothing else is read. Unchanged without an estimate."""
    got = read_scored(text, domain)
    if got is None:
        return text
    counts, averages, _ = got
    last = list(_ESTIMATE.finditer(text))[-1]
    return f"{text[: last.start(1)]}{estimate(*counts, averages, scale):.1f}{text[last.end(1) :]}"


# Overall leans, from the bottom of the scale (0) to its top (4).
LEANS = (
    "Overall, the weaknesses dominate what this user cares about, so this {noun} is likely to leave "
    "them thoroughly disappointed.",
    "Overall, the weaknesses outweigh the strengths for this user, so the {noun} should fall short of "
    "their taste.",
    "Overall, the strengths and weaknesses roughly balance out, leaving a lukewarm, middling "
    "impression of the {noun}.",
    "Overall, the strengths outweigh the weaknesses for this user, so the {noun} should please them "
    "despite some reservations.",
    "Overall, the strengths line up almost perfectly with what this user values, so this {noun} should "
    "delight them.",
)


def lean_band(frac: float) -> int:
    """0..4: the lean of a rating at position ``frac`` in [0, 1] of the scale (bands centred on
    0, 1/4, 1/2, 3/4, 1, so reading a lean back lands within an eighth of the scale)."""
    return int(min(4, max(0, math.floor(frac * 4 + 0.5))))


# --- the preference-set format --------------------------------------------------------------------
_SECTION = re.compile(r"\[(Like|Dislike)\]\s*\n(.*?)(?=\n\s*\[[A-Za-z ]+\]|\Z)", re.DOTALL)


def format_preferences(likes: list[str], dislikes: list[str]) -> str:
    def side(xs: list[str]) -> str:
        return "\n".join(f"- {x}" for x in xs) if xs else "- None."

    return f"[Like]\n{side(likes)}\n\n[Dislike]\n{side(dislikes)}"


def parse_preferences(text: str) -> tuple[list[str], list[str]]:
    """(likes, dislikes) bullets of a ``[Like]``/``[Dislike]`` text; ``None.`` bullets dropped."""
    sides: dict[str, list[str]] = {"Like": [], "Dislike": []}
    for m in _SECTION.finditer(text or ""):
        for line in m.group(2).splitlines():
            line = line.strip()
            if not line.startswith(("-", "*", "•")):
                continue
            item = line.lstrip("-*• ").strip()
            if item and item.rstrip(".").lower() != "none":
                sides[m.group(1)].append(item)
    return sides["Like"], sides["Dislike"]


# --- helpers --------------------------------------------------------------------------------------
def _condense(clause: str) -> str:
    s = clause.strip()
    prev = None
    while prev != s:
        prev = s
        s = _LEAD_FILLER.sub("", s, count=1).strip()
    s = _TRAIL.sub("", s).strip()
    s = s.rstrip(" .!?,;:")
    words = s.split()
    if len(words) > MAX_BULLET_WORDS:
        s = " ".join(words[:MAX_BULLET_WORDS]).rstrip(" ,;:")
    return s[:1].upper() + s[1:] if s else s


def _content_terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return [w for w in words if w not in STOPWORDS and w not in GENERIC_TERMS and len(w) > 2]


def _has_subject(core: str) -> bool:
    """Does the condensed clause name something (an aspect), rather than only the reviewer's mood?"""
    if not core or len(core.split()) < 2:
        return False
    first = core.split()[0].lower()
    if first in _NO_SUBJECT:
        return False
    return bool(_aspect_terms(core))


def _aspect_terms(text: str) -> list[str]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lex = _lexicon(SentimentIntensityAnalyzer)
    return [w for w in _content_terms(text) if abs(lex.get(w, 0.0)) == 0.0]


_LEX_CACHE: dict[str, float] = {}


def _lexicon(cls) -> dict[str, float]:
    if not _LEX_CACHE:
        _LEX_CACHE.update(cls().lexicon)
        _LEX_CACHE.update({k: v for k, v in LEXICON_SUPPLEMENT.items() if v != 0.0})
        for k, v in LEXICON_SUPPLEMENT.items():
            if v == 0.0:
                _LEX_CACHE.pop(k, None)
    return _LEX_CACHE


def _norm(text: str) -> str:
    words = _WORD.findall(text.lower())
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def _summarise(bullets: list[str], k: int) -> list[tuple[str, str]]:
    """(bullet, term) for the ``k`` most recurrent bullets: group by key term (document frequency over
    bullets), each term represented by its most common normalised bullet (ties: shorter, then
    alphabetical)."""
    if not bullets:
        return []
    forms: dict[str, str] = {}
    for b in bullets:
        forms.setdefault(_norm(b), b)
    phrase_n = Counter(_norm(b) for b in bullets)
    term_n: Counter[str] = Counter()
    for b in bullets:
        term_n.update(set(_aspect_terms(b)) or {_norm(b)})
    chosen: list[str] = []
    terms: list[str] = []
    covered: set[str] = set()
    for term, _ in sorted(term_n.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(chosen) >= k:
            break
        if term in covered:
            continue
        cands = [p for p in phrase_n if term in set(_aspect_terms(p)) or p == term]
        if not cands:
            continue
        best = min(cands, key=lambda p: (-phrase_n[p], len(p), p))
        if forms[best] in chosen or covered & set(_aspect_terms(best)):
            continue
        chosen.append(forms[best])
        terms.append(term)
        covered.update(_aspect_terms(best))
    return list(zip(chosen, terms, strict=True))


def _clean_list(xs: list[str]) -> list[str]:
    # a rationale must not quote numbers (it could leak the rating): drop bullets holding digits
    return [x.rstrip(" .") for x in xs if not re.search(r"\d", x)]


def _pairs(users: list[str], items: list[str], tag: str) -> list[tuple[str, str, str]]:
    """(user bullet, item bullet, tag) for each user bullet sharing key terms with an item bullet."""
    out = []
    used: set[str] = set()
    for u in users:
        ut = set(_aspect_terms(u))
        best = None
        for it in items:
            if it in used:
                continue
            ov = len(ut & set(_aspect_terms(it)))
            if ov and (best is None or ov > best[0]):
                best = (ov, it)
        if best:
            used.add(best[1])
            out.append((u, best[1], tag))
    return out


def _names(pairs: list[tuple[str, str, str]]) -> str:
    """The aspect words each (user bullet, item bullet) pair shares, in the item bullet's order; "none"."""
    names = []
    for u, i, _ in pairs:
        shared = set(_aspect_terms(u))
        words = [w for w in _aspect_terms(i) if w in shared]
        name = " ".join(dict.fromkeys(words))
        if name and name not in names:
            names.append(name)
    return ", ".join(names) or "none"


_AVERAGE = re.compile(r"\[Average Rating\]\s*\n\s*(\d+(?:\.\d+)?)")


def _average(profile: str) -> str | None:
    hit = _AVERAGE.search(profile or "")
    return hit.group(1) if hit else None


def _pair_sentence(user_b: str, item_b: str, tag: str, noun: str, lower: bool = False) -> str:
    u, i = _lc1(user_b), _lc1(item_b)
    if tag == "match":
        out = (
            f"Reviewers of this {noun} say that {i}, which matches this user's taste, since they "
            f"liked it when {u}."
        )
    elif tag == "miss":
        out = f"Reviewers complain that {i}, a letdown for a user who liked it when {u}."
    elif tag == "relief":
        out = f"Reviewers say that {i}, which eases this user's dislike of cases where {u}."
    else:
        out = f"Reviewers report that {i}, exactly what this user disliked when {u}."
    return out[:1].lower() + out[1:] if lower else out


def _first_sentence(text: str) -> str:
    text = (text or "").strip()
    if not text or re.search(r"\d", text.split(".")[0]):
        return ""
    first = _SENT_SPLIT.split(text)[0].strip()
    return first if first.endswith((".", "!", "?")) else first + "."


def _lc1(s: str) -> str:
    s = s.rstrip(" .")
    return s[:1].lower() + s[1:] if s[:2] != s[:2].upper() else s


def _lc(xs: list[str]) -> list[str]:
    return [_lc1(x) for x in xs]


def _join(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")
