"""Word lists for the synthetic world: aspects, phrasings, genres, titles, per domain.

Every aspect has noun phrases (``(text, plural)``), positive and negative predicates and a feature
phrase for item descriptions. A predicate may hold ``{be}``, filled with the domain's verb form that
agrees with the noun ("the plot was", "the twists were"; products speak in the present tense). No
noun phrase of one aspect occurs inside a phrase of another aspect, so a test can find an aspect's
mentions by substring.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Aspect:
    name: str
    nouns: tuple[tuple[str, bool], ...]  # (noun phrase, is_plural)
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    feature: str  # for item descriptions: "a twisty, gripping plot"


@dataclass(frozen=True)
class Vocab:
    domain: str
    item_noun: str  # "movie"
    verb_past: str  # "watched"
    tense: tuple[str, str]  # ("was", "were") or ("is", "are")
    aspects: tuple[Aspect, ...]
    genres: tuple[str, ...]
    affinity: dict[str, tuple[str, ...]]  # genre -> aspects such items tend to be strong in
    title_adj: tuple[str, ...]
    title_noun: tuple[str, ...]
    fillers: tuple[str, ...]
    openers: tuple[str, ...]
    waste: str  # "time" / "money"
    product_types: dict[str, tuple[str, ...]] = field(default_factory=dict)  # product domains only

    @property
    def aspect_names(self) -> list[str]:
        return [a.name for a in self.aspects]

    def aspect(self, name: str) -> Aspect:
        for a in self.aspects:
            if a.name == name:
                return a
        raise KeyError(name)


def A(name, nouns, pos, neg, feature) -> Aspect:
    return Aspect(name, tuple(nouns), tuple(pos), tuple(neg), feature)


GENERIC_POS = ("{be} excellent", "{be} a real highlight", "{be} fantastic")
GENERIC_NEG = ("{be} a real weak point", "{be} disappointing", "{be} poor")

_MOVIE = Vocab(
    domain="movie",
    item_noun="movie",
    verb_past="watched",
    tense=("was", "were"),
    aspects=(
        A(
            "plot",
            [("the plot", False), ("the story", False), ("the storyline", False)],
            [
                "{be} full of clever twists",
                "kept me guessing until the end",
                "{be} gripping from start to finish",
                "{be} cleverly constructed",
            ],
            ["{be} predictable", "{be} full of holes", "made little sense", "{be} paper-thin"],
            "a twisty, gripping plot",
        ),
        A(
            "acting",
            [("the acting", False), ("the performances", True), ("the cast", False)],
            ["{be} outstanding", "{be} completely convincing", "{be} superb across the board"],
            ["{be} wooden", "felt flat and unconvincing", "{be} painfully stiff"],
            "powerful performances from its cast",
        ),
        A(
            "visuals",
            [("the visuals", True), ("the cinematography", False), ("the special effects", True)],
            ["{be} stunning", "{be} gorgeous to look at", "looked absolutely beautiful"],
            ["looked cheap", "{be} murky and dull", "{be} dated and ugly"],
            "striking cinematography",
        ),
        A(
            "soundtrack",
            [("the soundtrack", False), ("the score", False), ("the music", False)],
            ["{be} beautiful", "stuck in my head for days", "{be} haunting and memorable"],
            ["{be} grating", "{be} forgettable", "{be} intrusive and loud"],
            "a memorable score",
        ),
        A(
            "pacing",
            [("the pacing", False), ("the tempo", False)],
            ["{be} tight", "never let up", "{be} perfectly judged"],
            ["dragged badly", "{be} painfully slow", "{be} all over the place"],
            "brisk, tight pacing",
        ),
        A(
            "humour",
            [("the humour", False), ("the jokes", True), ("the comedy", False)],
            ["{be} genuinely funny", "had me laughing out loud", "landed every time"],
            ["fell flat", "{be} cringeworthy", "{be} juvenile and tired"],
            "sharp humour",
        ),
        A(
            "romance",
            [("the romance", False), ("the love story", False)],
            ["{be} touching", "{be} sweet and believable", "{be} genuinely moving"],
            ["felt forced", "{be} cheesy", "had zero chemistry"],
            "a heartfelt romance",
        ),
        A(
            "action scenes",
            [("the action scenes", True), ("the fight scenes", True), ("the stunts", True)],
            ["{be} thrilling", "{be} brilliantly choreographed", "{be} a blast"],
            ["{be} incoherent", "{be} boring and repetitive", "{be} badly edited"],
            "spectacular action scenes",
        ),
        A(
            "dialogue",
            [("the dialogue", False), ("the script", False), ("the writing", False)],
            ["{be} sharp and witty", "{be} smart", "felt natural"],
            ["{be} clunky", "{be} cringe-inducing", "felt stilted"],
            "sharp, witty dialogue",
        ),
        A(
            "ending",
            [("the ending", False), ("the finale", False), ("the last act", False)],
            ["{be} satisfying", "{be} perfect", "blew me away"],
            ["{be} rushed", "{be} a letdown", "made no sense"],
            "an unforgettable ending",
        ),
        A(
            "characters",
            [("the characters", True), ("the protagonist", False)],
            ["{be} rich and memorable", "felt real", "{be} easy to root for"],
            ["{be} one-dimensional", "{be} hard to care about", "{be} thinly written"],
            "memorable, well-drawn characters",
        ),
        A(
            "atmosphere",
            [("the atmosphere", False), ("the mood", False), ("the tone", False)],
            ["{be} immersive", "{be} wonderfully tense", "pulled me right in"],
            ["{be} inconsistent", "{be} flat", "never settled"],
            "a rich, immersive atmosphere",
        ),
    ),
    genres=(
        "Action",
        "Comedy",
        "Drama",
        "Thriller",
        "Horror",
        "Romance",
        "Sci-Fi",
        "Animation",
        "Crime",
        "Fantasy",
        "Musical",
        "Mystery",
    ),
    affinity={
        "Action": ("action scenes", "visuals"),
        "Comedy": ("humour", "dialogue"),
        "Drama": ("acting", "characters"),
        "Thriller": ("plot", "pacing", "ending"),
        "Horror": ("atmosphere", "soundtrack"),
        "Romance": ("romance", "characters"),
        "Sci-Fi": ("visuals", "plot"),
        "Animation": ("visuals", "humour"),
        "Crime": ("plot", "dialogue"),
        "Fantasy": ("visuals", "atmosphere"),
        "Musical": ("soundtrack", "romance"),
        "Mystery": ("plot", "ending"),
    },
    title_adj=(
        "Silent",
        "Last",
        "Broken",
        "Hidden",
        "Crimson",
        "Midnight",
        "Distant",
        "Burning",
        "Frozen",
        "Golden",
        "Lost",
        "Wild",
        "Hollow",
        "Final",
    ),
    title_noun=(
        "Harbor",
        "Horizon",
        "Kingdom",
        "Signal",
        "Garden",
        "River",
        "Empire",
        "Mirror",
        "Shadow",
        "Promise",
        "Frontier",
        "Echo",
        "Summer",
        "Protocol",
    ),
    fillers=(
        "I watched this with my family on a Friday night.",
        "Saw it in the cinema when it came out.",
        "I'd heard a lot about this one before watching.",
        "It had been on my list for a while.",
        "The runtime felt about right.",
        "I might rewatch it at some point.",
        "My friends had mixed opinions about it.",
        "Caught it on a long flight.",
    ),
    openers=(
        "Where do I start.",
        "Just finished this one.",
        "Finally got around to it.",
        "Here are my thoughts.",
    ),
    waste="time",
)

_BOOK = Vocab(
    domain="book",
    item_noun="book",
    verb_past="read",
    tense=("was", "were"),
    aspects=(
        A(
            "prose",
            [("the prose", False), ("the writing style", False), ("the language", False)],
            ["{be} lyrical", "{be} beautifully crafted", "flowed effortlessly"],
            ["{be} overwrought", "{be} clumsy", "{be} a slog to get through"],
            "lyrical, beautifully crafted prose",
        ),
        A(
            "characters",
            [("the characters", True), ("the main character", False)],
            ["{be} complex and believable", "felt like real people", "{be} unforgettable"],
            ["{be} flat", "{be} impossible to like", "{be} cardboard cut-outs"],
            "complex, believable characters",
        ),
        A(
            "world-building",
            [("the world-building", False), ("the setting", False)],
            ["{be} incredibly detailed", "{be} vivid and original", "felt completely alive"],
            ["{be} thin", "{be} confusing", "felt generic"],
            "vivid world-building",
        ),
        A(
            "pacing",
            [("the pacing", False), ("the middle section", False)],
            ["{be} perfectly judged", "never dragged", "{be} a real page-turner"],
            ["dragged on forever", "{be} painfully slow", "{be} uneven"],
            "page-turning pacing",
        ),
        A(
            "plot",
            [("the plot", False), ("the story", False), ("the mystery", False)],
            ["{be} full of clever twists", "kept me guessing", "{be} ingeniously plotted"],
            ["{be} predictable", "{be} full of holes", "went nowhere"],
            "an ingenious, twisting plot",
        ),
        A(
            "dialogue",
            [("the dialogue", False), ("the conversations", True)],
            ["{be} sharp", "{be} witty and natural", "crackled with energy"],
            ["{be} wooden", "{be} stilted", "felt unnatural"],
            "crackling dialogue",
        ),
        A(
            "ending",
            [("the ending", False), ("the final chapters", True), ("the conclusion", False)],
            ["{be} deeply satisfying", "{be} perfect", "left me stunned"],
            ["{be} rushed", "{be} a cop-out", "fell apart"],
            "a deeply satisfying ending",
        ),
        A(
            "humour",
            [("the humour", False), ("the jokes", True), ("the wit", False)],
            ["{be} hilarious", "had me laughing out loud", "{be} wonderfully dry"],
            ["fell flat", "{be} forced", "{be} grating"],
            "dry, clever humour",
        ),
        A(
            "romance",
            [("the romance", False), ("the love story", False)],
            ["{be} swoon-worthy", "{be} tender and believable", "{be} beautifully done"],
            ["felt forced", "{be} cheesy", "{be} insta-love nonsense"],
            "a tender romance",
        ),
        A(
            "themes",
            [("the themes", True), ("the ideas", True)],
            ["{be} thought-provoking", "{be} profound", "stayed with me for weeks"],
            ["{be} heavy-handed", "{be} shallow", "felt preachy"],
            "thought-provoking themes",
        ),
        A(
            "atmosphere",
            [("the atmosphere", False), ("the mood", False)],
            ["{be} haunting", "{be} wonderfully eerie", "drew me right in"],
            ["{be} flat", "{be} inconsistent", "never came together"],
            "a haunting atmosphere",
        ),
        A(
            "research",
            [("the research", False), ("the historical detail", False)],
            ["{be} meticulous", "{be} impressive", "felt authentic"],
            ["{be} sloppy", "{be} full of errors", "felt lazy"],
            "meticulous historical research",
        ),
    ),
    genres=(
        "Fantasy",
        "Mystery",
        "Romance",
        "Literary Fiction",
        "Science Fiction",
        "Historical Fiction",
        "Thriller",
        "Horror",
        "Humour",
        "Young Adult",
    ),
    affinity={
        "Fantasy": ("world-building", "characters"),
        "Mystery": ("plot", "ending"),
        "Romance": ("romance", "dialogue"),
        "Literary Fiction": ("prose", "themes"),
        "Science Fiction": ("world-building", "themes"),
        "Historical Fiction": ("research", "atmosphere"),
        "Thriller": ("pacing", "plot"),
        "Horror": ("atmosphere", "pacing"),
        "Humour": ("humour", "dialogue"),
        "Young Adult": ("characters", "romance"),
    },
    title_adj=(
        "Glass",
        "Paper",
        "Quiet",
        "Ninth",
        "Salt",
        "Iron",
        "Winter",
        "Borrowed",
        "Secret",
        "Scarlet",
        "Drowned",
        "Forgotten",
        "Endless",
        "Sleeping",
    ),
    title_noun=(
        "Orchard",
        "Cartographer",
        "Lantern",
        "Daughter",
        "Library",
        "Crown",
        "Tide",
        "Archive",
        "Sparrow",
        "Lighthouse",
        "Letters",
        "Island",
        "Clockmaker",
        "Atlas",
    ),
    fillers=(
        "I read this on holiday.",
        "A friend recommended this one to me.",
        "Finished it in a couple of sittings.",
        "I listened to the audiobook version.",
        "Picked it up for my book club.",
        "It took me a while to get into it.",
        "The cover caught my eye in the shop.",
    ),
    openers=("Just finished this one.", "Some thoughts after finishing it.", "I went in with high hopes."),
    waste="time",
)

_PRODUCT = Vocab(
    domain="product",
    item_noun="product",
    verb_past="bought",
    tense=("is", "are"),
    aspects=(
        A(
            "build quality",
            [("the build quality", False), ("the construction", False), ("the materials", True)],
            ["{be} rock solid", "{be} surprisingly sturdy", "{be} top-notch"],
            ["{be} flimsy", "{be} cheap and plasticky", "{be} shoddy"],
            "rock-solid construction",
        ),
        A(
            "battery life",
            [("the battery life", False), ("the battery", False)],
            ["{be} outstanding", "easily lasts a full day", "{be} better than advertised"],
            ["{be} terrible", "dies within a few hours", "drains far too quickly"],
            "long battery life",
        ),
        A(
            "price",
            [("the price", False), ("the price tag", False), ("the cost", False)],
            ["{be} a bargain", "{be} very reasonable", "{be} hard to beat"],
            ["{be} far too high", "{be} a rip-off", "{be} way over the top"],
            "a great price",
        ),
        A(
            "design",
            [("the design", False), ("the look", False), ("the styling", False)],
            ["{be} sleek and modern", "{be} beautiful", "{be} really elegant"],
            ["{be} ugly", "{be} clunky and dated", "{be} awkward"],
            "a sleek, modern design",
        ),
        A(
            "ease of use",
            [("the controls", True), ("the interface", False), ("the companion app", False)],
            ["{be} intuitive", "{be} dead simple", "{be} easy to figure out"],
            ["{be} confusing", "{be} a nightmare to use", "{be} frustrating"],
            "intuitive controls",
        ),
        A(
            "performance",
            [("the performance", False), ("the speed", False), ("the power", False)],
            ["{be} impressive", "{be} more than enough", "{be} blazing"],
            ["{be} sluggish", "{be} underwhelming", "{be} weak"],
            "impressive performance",
        ),
        A(
            "durability",
            [("the durability", False), ("the longevity", False)],
            [
                "{be} excellent, it is still going strong",
                "{be} impressive after months of use",
                "{be} superb",
            ],
            [
                "{be} awful, it broke within weeks",
                "{be} lousy; it stopped working after a month",
                "{be} dreadful",
            ],
            "lasting durability",
        ),
        A(
            "customer support",
            [("the customer service", False), ("the support team", False), ("the warranty service", False)],
            ["{be} quick and helpful", "{be} fantastic", "{be} genuinely responsive"],
            ["{be} useless", "{be} impossible to reach", "{be} unhelpful"],
            "responsive customer support",
        ),
        A(
            "setup",
            [("the setup", False), ("the installation", False)],
            ["{be} a breeze", "takes minutes", "{be} painless"],
            ["{be} a headache", "takes forever", "{be} needlessly complicated"],
            "a painless setup",
        ),
        A(
            "noise",
            [("the noise level", False), ("the fan noise", False)],
            ["{be} barely noticeable", "{be} impressively low", "{be} whisper quiet"],
            ["{be} annoyingly loud", "{be} unbearable", "{be} distracting"],
            "whisper-quiet operation",
        ),
        A(
            "portability",
            [("the size", False), ("the weight", False)],
            ["{be} perfect for travel", "{be} just right for carrying around", "{be} ideal for a small bag"],
            ["{be} a pain when travelling", "{be} awkward to carry", "{be} far too bulky"],
            "a compact, portable size",
        ),
        A(
            "instructions",
            [("the instructions", True), ("the manual", False), ("the documentation", False)],
            ["{be} clear", "{be} easy to follow", "{be} well written"],
            ["{be} baffling", "{be} badly translated", "{be} missing key steps"],
            "clear instructions",
        ),
    ),
    genres=(
        "Headphones",
        "Kitchen",
        "Home Office",
        "Outdoor",
        "Smart Home",
        "Phone Accessories",
        "Tools",
        "Fitness",
    ),
    affinity={
        "Headphones": ("battery life", "design"),
        "Kitchen": ("build quality", "durability"),
        "Home Office": ("noise", "ease of use"),
        "Outdoor": ("durability", "portability"),
        "Smart Home": ("setup", "ease of use"),
        "Phone Accessories": ("price", "portability"),
        "Tools": ("performance", "build quality"),
        "Fitness": ("battery life", "design"),
    },
    title_adj=(
        "Norvik",
        "Altura",
        "Kestrel",
        "Brightwell",
        "Zenda",
        "Orbix",
        "Halden",
        "Vanta",
        "Corvo",
        "Lumio",
    ),
    title_noun=("Pro", "Lite", "Max", "Air", "One", "S", "X", "Plus"),
    fillers=(
        "Bought this to replace an old one.",
        "Delivery was quick.",
        "I've been using it daily for a few weeks.",
        "Ordered it on sale.",
        "Got it as a gift for my partner.",
        "The box arrived slightly dented.",
        "I compared several options before choosing this one.",
    ),
    openers=("Quick review after some use.", "Here is my honest take.", "Long-time buyer, first review."),
    waste="money",
    product_types={
        "Headphones": ("Wireless Earbuds", "Over-Ear Headphones", "Sport Earphones"),
        "Kitchen": ("Blender", "Coffee Grinder", "Kettle", "Air Fryer"),
        "Home Office": ("Desk Lamp", "Ergonomic Keyboard", "Monitor Stand", "Desk Fan"),
        "Outdoor": ("Camping Lantern", "Hiking Backpack", "Water Filter"),
        "Smart Home": ("Smart Plug", "Video Doorbell", "Thermostat"),
        "Phone Accessories": ("Power Bank", "Phone Case", "Charging Stand"),
        "Tools": ("Cordless Drill", "Screwdriver Set", "Laser Level"),
        "Fitness": ("Fitness Tracker", "Smart Scale", "Jump Rope"),
    },
)

# Used for any domain without its own list (the DatasetConf default domain is "item").
_GENERIC = Vocab(
    domain="item",
    item_noun="item",
    verb_past="tried",
    tense=("is", "are"),
    aspects=(
        A(
            "quality",
            [("the quality", False), ("the workmanship", False)],
            ["{be} excellent", "{be} first-rate", "{be} superb"],
            ["{be} poor", "{be} shoddy", "{be} second-rate"],
            "first-rate quality",
        ),
        A(
            "value",
            [("the value", False), ("the price", False)],
            ["{be} great", "{be} hard to beat", "{be} very fair"],
            ["{be} awful", "{be} a rip-off", "{be} far too high"],
            "great value",
        ),
        A(
            "design",
            [("the design", False), ("the look", False)],
            ["{be} lovely", "{be} elegant", "{be} thoughtful"],
            ["{be} ugly", "{be} clumsy", "{be} dated"],
            "an elegant design",
        ),
        A(
            "ease of use",
            [("the usability", False), ("the handling", False)],
            ["{be} effortless", "{be} intuitive", "{be} simple"],
            ["{be} frustrating", "{be} confusing", "{be} awkward"],
            "effortless handling",
        ),
        A(
            "reliability",
            [("the reliability", False), ("the consistency", False)],
            ["{be} rock solid", "{be} dependable", "{be} flawless"],
            ["{be} patchy", "{be} unreliable", "{be} erratic"],
            "dependable reliability",
        ),
        A(
            "service",
            [("the service", False), ("the support", False)],
            ["{be} friendly", "{be} prompt", "{be} helpful"],
            ["{be} rude", "{be} slow", "{be} useless"],
            "friendly service",
        ),
        A(
            "features",
            [("the features", True), ("the extras", True)],
            ["{be} generous", "{be} well thought out", "{be} genuinely useful"],
            ["{be} lacking", "{be} gimmicky", "{be} half-baked"],
            "well thought-out features",
        ),
        A(
            "comfort",
            [("the comfort", False), ("the feel", False)],
            ["{be} wonderful", "{be} lovely", "{be} spot on"],
            ["{be} uncomfortable", "{be} rough", "{be} unpleasant"],
            "real comfort",
        ),
    ),
    genres=("Everyday", "Premium", "Budget", "Specialist", "Popular"),
    affinity={
        "Premium": ("quality", "design"),
        "Budget": ("value",),
        "Specialist": ("features",),
        "Popular": ("ease of use",),
    },
    title_adj=(
        "Classic",
        "Modern",
        "Simple",
        "Bold",
        "Bright",
        "Compact",
        "Grand",
        "Little",
        "Urban",
        "Rustic",
    ),
    title_noun=("Model", "Edition", "Series", "Line", "Range", "Set", "Kit", "Collection"),
    fillers=("I got this a few weeks ago.", "It arrived on time.", "I had seen it recommended online."),
    openers=("My thoughts so far.", "Quick review."),
    waste="money",
)

VOCABS: dict[str, Vocab] = {v.domain: v for v in (_MOVIE, _BOOK, _PRODUCT, _GENERIC)}
ALIASES = {
    "movies": "movie",
    "film": "movie",
    "films": "movie",
    "books": "book",
    "novel": "book",
    "products": "product",
}
GENERIC_DOMAIN = "item"

PREMISE_WHO = (
    "a retired detective",
    "a young chef",
    "a reluctant heir",
    "a small-town teacher",
    "a disgraced pilot",
    "a teenage inventor",
    "a grieving widow",
    "an ambitious journalist",
    "two estranged sisters",
    "a runaway bride",
    "an aging boxer",
    "a lonely lighthouse keeper",
)
PREMISE_WHAT = (
    "returns home after twenty years",
    "uncovers a long-buried family secret",
    "must survive one impossible night",
    "falls for a sworn rival",
    "chases a legendary treasure",
    "tries to save a failing restaurant",
    "is drawn into a conspiracy",
    "starts over in a new city",
    "searches for a missing brother",
    "makes a deal they come to regret",
)
USES = (
    "everyday use",
    "busy households",
    "travel",
    "small spaces",
    "beginners and pros alike",
    "daily commutes",
)

# Overall verdict sentences by realised rating band (0 = bottom of the scale … 4 = top).
VERDICTS = (
    ("A complete waste of {waste}.", "I cannot recommend this {noun} to anyone.", "Avoid this one."),
    ("Overall, a disappointment.", "I expected a lot more from this {noun}.", "Not worth it, in my opinion."),
    (
        "It was okay overall, nothing special.",
        "A mixed bag, to be honest.",
        "Decent enough, but I won't remember it.",
    ),
    ("Overall, a solid {noun}.", "I'd recommend it.", "Pretty good overall."),
    ("Highly recommended!", "One of the best things I have {verb} in a long time.", "An absolute gem."),
)
SUMMARIES = (
    ("Terrible", "Avoid", "Waste of {waste}", "Awful"),
    ("Disappointing", "Not for me", "Expected more", "Meh"),
    ("It was okay", "Mixed feelings", "Decent but flawed", "Average"),
    ("Really good", "Well worth it", "Very enjoyable", "Solid"),
    ("Loved it", "Absolutely brilliant", "A must", "Outstanding"),
)

# Sentence templates. {Noun}/{noun}: an aspect noun phrase, {pred}: a predicate with {be} filled in.
TPL_LIKED_STRONG = (
    "{Noun} {pred}.",
    "{Noun} {pred}, and that alone made it worth it.",
    "I loved how {noun} {pred}.",
    "Honestly, {noun} {pred}.",
    "What stood out most was that {noun} {pred}.",
    "{Noun} {pred}, which is exactly what I look for.",
)
TPL_LIKED_WEAK = (
    "I was hoping for more, but {noun} {pred}.",
    "{Noun} {pred}, which was a shame because that matters to me.",
    "Sadly, {noun} {pred}.",
    "My main gripe: {noun} {pred}.",
)
TPL_DISLIKED_WEAK = (
    "{Noun} {pred}, and that is my biggest pet peeve.",
    "{Noun} {pred}, something I really can't stand.",
    "Unfortunately {noun} {pred}, which ruined it for me.",
    "My biggest complaint: {noun} {pred}.",
)
TPL_DISLIKED_STRONG = ("Thankfully, {noun} {pred}.", "At least {noun} {pred}.")
TPL_NEUTRAL = (
    "{Noun} {be} fine, I suppose.",
    "I didn't pay much attention to {noun}.",
    "{Noun} {be} neither here nor there for me.",
    "{Noun} {be} about what you would expect.",
)
