"""The KV cache that generation uses: transformers' ``DynamicCache`` with in-place layers where they are safe.

transformers' ``DynamicLayer`` concatenates on every update, so each decoding step copies the whole cache
(74% of a batch-16 step of the tiny student on CPU). :func:`new_cache` replaces a cache's plain
full-attention layers by a subclass that writes into reserved room instead. That subclass reaches into
transformers' cache internals (``lazy_initialization``, ``is_initialized``, ``keys``/``values``, ``crop``,
``reset``, ``update``), so whether it is used is decided once per process (:func:`cache_kind`):

* ``in_place`` when transformers' installed version is inside the range exp3rt was tested with
  (:func:`exp3rt.versions.tested_ranges`; no range is known when running from a source tree that was never
  installed, and then the API check alone decides) and ``DynamicLayer`` still has everything the subclass
  relies on;
* ``plain`` otherwise: :func:`new_cache` returns transformers' own ``DynamicCache`` (no reserved room) and
  one warning says which check failed. Decoding is slower; the tokens and readouts are the same.

``EXP3RT_KV_CACHE=plain`` forces the plain cache (users who hit a cache problem, and CI, which checks that
the fallback generates the same tokens and probabilities); unset or any other value: automatic.
"""

from __future__ import annotations

import functools
import logging
import os

from packaging.specifiers import SpecifierSet

from exp3rt import versions

log = logging.getLogger(__name__)

ENV = "EXP3RT_KV_CACHE"
#: methods ``ReservedLayer`` calls or overrides; each must be a concrete method of ``DynamicLayer``
METHODS = ("lazy_initialization", "update", "crop", "reset", "get_seq_length")
#: attributes a fresh ``DynamicLayer`` must carry (set by its ``__init__``)
ATTRIBUTES = ("is_initialized", "keys", "values")


def _api_problem() -> str | None:
    """What transformers' ``DynamicLayer`` lacks of what the in-place layer relies on (None: nothing)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return "transformers.cache_utils has no DynamicLayer"
    missing = [
        name
        for name in METHODS
        if not callable(getattr(DynamicLayer, name, None))
        or getattr(getattr(DynamicLayer, name), "__isabstractmethod__", False)
    ]
    try:
        layer = DynamicLayer()
    except Exception as err:  # any failure means the subclass cannot be built either
        return f"DynamicLayer() fails ({type(err).__name__}: {err})"
    missing += [name for name in ATTRIBUTES if not hasattr(layer, name)]
    if missing:
        return f"transformers' DynamicLayer has no {', '.join(missing)}"
    return None


def _version_problem() -> str | None:
    """A sentence when the installed transformers is outside the tested range (None: inside or unknown)."""
    spec = versions.tested_ranges().get("transformers")
    installed = versions._installed("transformers")
    if spec and installed is not None and not SpecifierSet(spec).contains(installed, prereleases=True):
        return f"transformers {installed} is outside the range exp3rt was tested with ({spec})"
    return None


@functools.cache
def cache_kind() -> str:
    """``"in_place"`` or ``"plain"``, decided once per process (``cache_clear()`` to decide again)."""
    if os.environ.get(ENV, "").strip().lower() == "plain":
        log.info("%s=plain: generation uses transformers' DynamicCache", ENV)
        return "plain"
    problem = _version_problem() or _api_problem()
    if problem:
        log.warning(
            "%s, so generation falls back to transformers' DynamicCache (slower decoding, same results)",
            problem,
        )
        return "plain"
    return "in_place"


def new_cache(model, reserve: int = 0):
    """An empty KV cache for ``model``. ``reserve`` > 0 and :func:`cache_kind` ``in_place``: its
    full-attention layers append in place into room for ``reserve`` tokens (:func:`_reserved_layer_class`)
    instead of concatenating."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if reserve > 0 and layers and cache_kind() == "in_place":
        reserved = _reserved_layer_class()
        cache.layers = [reserved(int(reserve)) if _plain_layer(layer) else layer for layer in layers]
    return cache


def _plain_layer(layer) -> bool:
    """A plain full-attention ``DynamicLayer`` (keys/values (B, H, T, D), appended by concatenation); not a
    sliding window or any other kind."""
    from transformers.cache_utils import DynamicLayer

    return type(layer) is DynamicLayer


def _plain_layers(cache) -> bool:
    """A cache whose layers are plain full-attention ``DynamicLayer`` s (keys/values (B, H, T, D)), which
    generation's prompt pass can assemble from parts; anything else (sliding windows, transformers 4.x
    lists) is filled by one forward."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(_plain_layer(layer) for layer in layers)


@functools.cache
def _reserved_layer_class():
    """A ``DynamicLayer`` that writes into a buffer with room for ``reserve`` tokens (growing by half when
    full) and exposes ``keys``/``values`` as views of its filled part. Anything that replaces those views
    (crop, batch selection, a deep copy) is picked up on the next update: the buffer is rebuilt from
    them."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self, reserve: int = 0):
            super().__init__()
            self.reserve = int(reserve)
            self._kbuf = self._vbuf = self._kview = None
            self._filled = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            if (
                self._kbuf is None
                or self.keys is not self._kview
                or self._kbuf.shape[0] != key_states.shape[0]
            ):
                self._kbuf = None  # keys/values were replaced from outside: rebuild the buffer from them
                self._filled = int(self.keys.shape[-2]) if self.keys.numel() else 0
            need = self._filled + int(key_states.shape[-2])
            if self._kbuf is None or need > self._kbuf.shape[-2]:
                room = (
                    max(need, self.reserve)
                    if self._kbuf is None
                    else max(need, self._kbuf.shape[-2] * 3 // 2)
                )
                kbuf = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[-1]))
                vbuf = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[-1]))
                if self._filled:
                    kbuf[:, :, : self._filled] = self.keys
                    vbuf[:, :, : self._filled] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[:, :, self._filled : need] = key_states
            self._vbuf[:, :, self._filled : need] = value_states
            self._filled = need
            self.keys = self._kview = self._kbuf[:, :, :need]
            self.values = self._vbuf[:, :, :need]
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            if self._kbuf is not None and self.is_initialized:  # still views of the buffer: keep it
                self._kview, self._filled = self.keys, int(self.keys.shape[-2])

        def reset(self) -> None:
            self._kbuf = self._vbuf = self._kview = None
            self._filled = 0
            super().reset()

    return ReservedLayer
