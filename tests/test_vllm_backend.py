"""The vLLM backend against the HF path on the tiny Llama, through tests/fake_vllm.py (vLLM's offline API
on CPU, real logits): readouts equal within 1e-4 (1–5, 1–10 with "10" = "1","0", the 0–9 offset),
greedy reasoning token for token, reranking scores, LoRA and merged folders, what is passed to vLLM,
and the config errors. Both of vLLM's log-probability conventions are covered: raw (V1's default, the
top-k over the whole vocabulary) and processed (renormalised over ``allowed_token_ids``, V0)."""

from __future__ import annotations

import importlib
import math
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fake_vllm  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from exp3rt import CONF_DIR  # noqa: E402
from exp3rt.config import ConfigError, EvalConf, validate  # noqa: E402
from exp3rt.inference.generate import generate_batch  # noqa: E402
from exp3rt.inference.readout import generate_and_read, readout_only  # noqa: E402
from exp3rt.inference.rerank import score_candidates  # noqa: E402
from exp3rt.inference.vllm_backend import (  # noqa: E402
    VllmStudent,
    engine_kwargs,
    load_vllm_student,
    release_engines,
    vllm_lora_rank,
)
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens  # noqa: E402

TOL = 1e-4
MODES = ["raw_logprobs", "processed_logprobs"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from exp3rt.models.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", vocab="bpe", hidden=64, layers=2)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return path, model, transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def hf_memo():
    """HF-path results shared by the two logprobs conventions' runs of one test case."""
    return {}


@pytest.fixture(params=MODES)
def vllm(request, monkeypatch):
    """The fake ``vllm`` package for one test, in one of vLLM's two logprobs conventions."""
    fake_vllm.install(monkeypatch, request.param)
    release_engines()
    yield request.param
    release_engines()


def _student(path, tok) -> VllmStudent:
    llm = fake_vllm.LLM(str(path), tokenizer=str(path), enable_prefix_caching=True)
    return VllmStudent(llm, tok, model_path=str(path))


def _prompts(tok, sizes=(1, 4, 9, 2)):
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": "The acting was great but the plot was slow. " * k}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for k in sizes
    ]


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _assert_same_readouts(hf, vl, mode, single_token):
    assert len(hf) == len(vl)
    for a, b in zip(hf, vl, strict=True):
        assert a.ratings == b.ratings
        assert max(abs(x - y) for x, y in zip(a.probs, b.probs, strict=True)) < TOL
        assert math.isclose(sum(b.probs), 1.0, abs_tol=1e-9)
        assert b.most_likely == a.most_likely and abs(a.expected - b.expected) < TOL
        if mode == "processed_logprobs" and single_token:
            assert math.isnan(b.mass)  # renormalised root values and nothing else to recover the scale from
        else:
            assert math.isclose(a.mass, b.mass, rel_tol=1e-4)


# -------------------------------------------------------------------------------------- readout


@pytest.mark.parametrize("scale", [(1, 5, 0), (1, 10, 0), (1, 10, -1)], ids=["1-5", "1-10", "0-9"])
def test_fast_readout_equals_hf(tiny, vllm, scale):
    path, model, tok = tiny
    ratings = RatingTokens(scale[0], scale[1], offset=scale[2])
    seqs = ratings.token_ids(tok, RATING_PREFIX)
    prompts = _prompts(tok)
    student = _student(path, tok)
    _assert_same_readouts(
        readout_only(model, tok, prompts, ratings, batch_size=3),
        student.readout_only(prompts, ratings),
        vllm,
        ratings.single_token,
    )
    # the first call: one step after prompt + prefix, restricted to the ratings' first tokens, all of them
    # returned
    firsts = sorted({s[0] for s in seqs})
    root = student.llm.calls[0]
    assert root.prompts == [_ids(tok, p) + _ids(tok, RATING_PREFIX) for p in prompts]
    for sp in root.params:
        assert sp.allowed_token_ids == firsts and sp.logprobs == len(firsts)
        assert sp.max_tokens == 1 and sp.temperature == 0.0
    if scale[1] == 10 and scale[2] == 0:  # "10" = "1","0": the token after "1" under the full vocabulary
        one, zero = seqs[-1]
        assert seqs[0] == [one]
        if vllm == "raw_logprobs":  # one more cached step per prompt after "1"
            steps = [
                (p, sp)
                for c in student.llm.calls
                for p, sp in zip(c.prompts, c.params, strict=True)
                if sp.allowed_token_ids == [zero]
            ]
            assert len(steps) == len(prompts) and all(p[-1] == one for p, _ in steps)
        else:  # prompt log-probabilities on the full candidate string
            scored = [
                p
                for c in student.llm.calls
                for p, sp in zip(c.prompts, c.params, strict=True)
                if sp.prompt_logprobs is not None
            ]
            assert len(scored) == len(prompts) and all(p[-2:] == [one, zero] for p in scored)
    else:
        assert all(sp.prompt_logprobs is None for c in student.llm.calls for sp in c.params)


@pytest.mark.parametrize("scale_max", [5, 10])
def test_reasoning_then_readout_equals_hf(tiny, vllm, scale_max):
    path, model, tok = tiny
    ratings = RatingTokens(1, scale_max)
    prompts = _prompts(tok)
    student = _student(path, tok)
    hf = generate_and_read(model, tok, prompts, ratings, max_new_tokens=8, batch_size=3)
    vl = student.generate_and_read(prompts, ratings, max_new_tokens=8)
    for (ga, _), (gb, _) in zip(hf, vl, strict=True):
        assert (
            gb.new_token_ids == ga.new_token_ids and gb.text == ga.text and gb.stop_reason == ga.stop_reason
        )
        assert gb.prompt_ids == ga.prompt_ids
    assert {g.stop_reason for g, _ in hf} == {"eos", "length"}  # rows end both ways
    _assert_same_readouts([r for _, r in hf], [r for _, r in vl], vllm, ratings.single_token)
    gen = student.llm.calls[0]
    sp = gen.params[0]
    assert sp.stop == [RATING_PREFIX.rstrip()] and sp.include_stop_str_in_output is False
    assert sp.stop_token_ids == [tok.eos_token_id] and sp.temperature == 0.0 and sp.max_tokens == 8
    assert gen.prompts == [_ids(tok, p) for p in prompts] and gen.lora_request is None


def test_stop_string_and_eos_cut_like_hf(tiny, vllm):
    path, model, tok = tiny
    prompts = _prompts(tok)
    first = generate_batch(model, tok, prompts[:1], 12)[0]
    stop = tok.decode(first.new_token_ids[5:8])
    hf = generate_batch(model, tok, prompts, 12, stop=[stop])
    vl = _student(path, tok).generate(prompts, 12, stop=[stop])
    assert hf[0].stop_reason == "stop" and stop not in hf[0].text
    for a, b in zip(hf, vl, strict=True):
        assert (b.new_token_ids, b.text, b.stop_reason) == (a.new_token_ids, a.text, a.stop_reason)


def test_sampling_is_seeded_per_prompt(tiny, vllm):
    path, _, tok = tiny
    student = _student(path, tok)
    prompts = _prompts(tok, (1, 3, 2))
    a = student.generate(prompts, 10, do_sample=True, temperature=1.5, seed=7)
    b = student.generate(prompts, 10, do_sample=True, temperature=1.5, seed=7)
    c = student.generate(prompts, 10, do_sample=True, temperature=1.5, seed=0)  # seed 0 is a seed
    assert [o.new_token_ids for o in a] == [o.new_token_ids for o in b] != [o.new_token_ids for o in c]
    assert [sp.seed for sp in student.llm.calls[0].params] == [7, 8, 9]
    assert all(sp.temperature == 1.5 for sp in student.llm.calls[0].params)


# -------------------------------------------------------------------------------------- reranking


def _user_prompts(tok, ratings, n=4):
    from exp3rt.student.prompts import StudentPrompts, load_student_prompt
    from exp3rt.student.tokenize import render_prompt

    prompts = StudentPrompts(load_student_prompt("exp3rt_v1"), "movie", ratings)
    out = []
    for j in range(n):
        sections = {
            "user_profile": "[Like]\n- Tense plots.\n- Strong acting.\n[Dislike]\n- Slow pacing.",
            "item_description": f"Movie {j}: " + "a heist story with twists. " * (j + 1),
            "item_profile": "[Like]\n- The score.\n" + "- The cast.\n" * j + "[Dislike]\n- The ending.",
        }
        system, user = prompts.rating_messages(sections, reasoning=True)
        out.append((f"item{j}", render_prompt(tok, system, user.text)))
    return out


@pytest.mark.parametrize(("mode", "scale_max"), [("fast", 5), ("fast", 10), ("full", 10)])
def test_rerank_scores_equal_hf(tiny, vllm, hf_memo, mode, scale_max):
    path, model, tok = tiny
    ratings = RatingTokens(1, scale_max)
    by_user = {"u1": _user_prompts(tok, ratings, 3), "u2": _user_prompts(tok, ratings, 2)[::-1], "u3": []}
    vl_stats = {}
    if ("rerank", mode, scale_max) not in hf_memo:
        hf_stats = {}
        hf_memo["rerank", mode, scale_max] = (
            score_candidates(model, tok, by_user, ratings, mode=mode, max_new_tokens=6, stats=hf_stats),
            hf_stats,
        )
    hf, hf_stats = hf_memo["rerank", mode, scale_max]
    student = _student(path, tok)
    vl = student.score_candidates(by_user, ratings, mode=mode, max_new_tokens=6, stats=vl_stats)
    assert list(vl) == list(hf) and vl["u3"] == []
    for user in hf:
        for (ia, ea, pa), (ib, eb, pb) in zip(hf[user], vl[user], strict=True):
            assert ia == ib and abs(ea - eb) < TOL
            assert max(abs(x - y) for x, y in zip(pa, pb, strict=True)) < TOL and math.isclose(
                sum(pb), 1.0, abs_tol=1e-9
            )
    for user in ("u1", "u2"):
        assert vl_stats[user]["prefix_tokens"] > 0 and vl_stats[user]["seconds"] > 0
        if mode == "full":
            assert vl_stats[user]["reasoning"] == hf_stats[user]["reasoning"]
    # the users' shared prefixes were served from the (fake) prefix cache
    assert student.llm.kwargs["enable_prefix_caching"] is True and student.llm.prefix_hits > 0
    with pytest.raises(ValueError, match="rerank mode must be one of"):
        student.score_candidates(by_user, ratings, mode="slow")


# -------------------------------------------------------------------------------------- engines: LoRA, merged


def _student_cfg(path):
    return OmegaConf.create({"student": {"model_path": str(path), "build_tiny": False, "dtype": "float32"}})


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A rank-4 LoRA on the tiny Llama with random B (its outputs differ from the base), and its merge."""
    from peft import LoraConfig, get_peft_model

    path, _, tok = tiny
    root = tmp_path_factory.mktemp("lora")
    base = transformers.AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
    )
    peft_model.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "merged")
    tok.save_pretrained(root / "merged")
    return root / "adapter", root / "merged"


def test_lora_adapter_and_merged_folder(tiny, adapter, vllm):
    from exp3rt.inference.predict import load_student

    path, base_model, tok = tiny
    adapter_dir, merged_dir = adapter
    tcfg, ev = _student_cfg(path), OmegaConf.structured(EvalConf(backend="vllm", seed=3))
    ratings = RatingTokens(1, 10)
    kw, lora = engine_kwargs(tcfg, adapter_dir, ev, max_logprobs=21)
    assert lora == str(adapter_dir)
    assert kw["model"] == str(path) and kw["tokenizer"] == str(
        adapter_dir
    )  # base weights + the adapter's tokenizer
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 8 and kw["max_loras"] == 1  # r=4 rounded up
    assert kw["enable_prefix_caching"] is True and kw["gpu_memory_utilization"] == 0.9 and kw["seed"] == 3
    assert kw["tensor_parallel_size"] == 1 and "max_model_len" not in kw and kw["max_logprobs"] == 21

    prompts = _prompts(tok)
    student = load_vllm_student(tcfg, adapter_dir, ev, ratings)
    assert load_vllm_student(tcfg, adapter_dir, ev, ratings) is student  # one engine per process
    peft_model, peft_tok = load_student(tcfg, adapter_dir)
    hf = readout_only(peft_model, peft_tok, prompts, ratings)
    vl = student.readout_only(prompts, ratings)
    _assert_same_readouts(hf, vl, vllm, single_token=False)
    base = readout_only(base_model, tok, prompts, ratings)
    assert (
        max(abs(x - y) for a, b in zip(base, vl, strict=True) for x, y in zip(a.probs, b.probs, strict=True))
        > 1e-3
    )
    assert all(
        c.lora_request is not None
        and c.lora_request.lora_path == str(adapter_dir)
        and c.lora_request.lora_int_id == 1
        for c in student.llm.calls
    )

    merged = load_vllm_student(
        tcfg, merged_dir, ev, ratings
    )  # exp3rt-merge's folder: the model itself, no LoRA
    assert merged is not student and merged.llm.kwargs["model"] == str(merged_dir)
    assert merged.llm.kwargs["enable_lora"] is False and merged.lora_request is None
    _assert_same_readouts(hf, merged.readout_only(prompts, ratings), vllm, single_token=False)
    assert all(c.lora_request is None for c in merged.llm.calls)

    with pytest.raises(ConfigError, match="eval.vllm_max_lora_rank"):
        engine_kwargs(tcfg, adapter_dir, OmegaConf.structured(EvalConf(backend="vllm", vllm_max_lora_rank=2)))
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 128, 300)] == [8, 8, 16, 128, 320]
    with pytest.raises(ValueError, match="exp3rt-merge"):
        vllm_lora_rank(1024)


# -------------------------------------------------------------------------------------- predict()


def _train_cfg(path, scale_max=5):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"student.model_path={path}",
                "student.build_tiny=false",
                f"dataset.scale.max={scale_max}",
            ],
        )
    return validate(cfg)


def _examples(n=3):
    from exp3rt.student.examples import SFTExample

    return [
        SFTExample(
            "rating",
            "You predict ratings.",
            "User liked tense plots. " * (k + 1) + "Rate the movie.",
            "",
            {"user_id": f"u{k}", "item_id": f"i{k}", "rating": 3.0, "warm": k % 2 == 0},
        )
        for k in range(n)
    ]


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_predict_gives_the_same_predictions_on_either_backend(tiny, vllm, mode):
    from exp3rt.inference.predict import predict

    path = tiny[0]
    tcfg = _train_cfg(path, scale_max=10)
    examples = _examples()
    ev = {
        b: OmegaConf.structured(EvalConf(backend=b, mode=mode, max_new_tokens=6, batch_size=2))
        for b in ("hf", "vllm")
    }
    hf, vl = predict(tcfg, path, examples, ev["hf"]), predict(tcfg, path, examples, ev["vllm"])
    assert fake_vllm.LLM.instances and fake_vllm.LLM.instances[-1].kwargs["model"] == str(path)
    for a, b in zip(hf, vl, strict=True):
        assert (b.user_id, b.item_id, b.truth, b.warm, b.reasoning) == (
            a.user_id,
            a.item_id,
            a.truth,
            a.warm,
            a.reasoning,
        )
        assert list(b.probs) == list(a.probs) and max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < TOL
        assert b.rating_argmax == a.rating_argmax and abs(b.rating_expected - a.rating_expected) < TOL
    if mode == "full":
        assert any(p.reasoning for p in vl)


# -------------------------------------------------------------------------------------- config


def _eval_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_backend_config_errors(monkeypatch):
    assert validate(_eval_cfg([])).eval.backend == "hf"
    from helpers import rejection

    told = rejection(_eval_cfg, ["eval.backend=tgi"])  # the schema's enum, while composing
    assert "eval.backend" in told and "Invalid value 'tgi', expected one of [hf, vllm]" in told
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed (as on this machine)
    with pytest.raises(ConfigError) as err:
        validate(_eval_cfg(["eval.backend=vllm"]))
    assert (
        "eval.backend" in str(err.value)
        and 'pip install -e ".[vllm]"' in str(err.value)
        and "GPU" in str(err.value)
    )
    fake_vllm.install(monkeypatch)
    assert validate(_eval_cfg(["eval.backend=vllm"])).eval.backend == "vllm"
    for key, value in (
        ("vllm_gpu_memory_utilization", 1.5),
        ("vllm_tensor_parallel_size", 0),
        ("vllm_max_model_len", 0),
    ):
        with pytest.raises(ConfigError, match=f"config key 'eval.{key}'"):
            validate(_eval_cfg(["eval.backend=vllm", f"eval.{key}={value}"]))
    # the estimate tool rewrites a reasoning between generation and readout: the hf path only
    with pytest.raises(ConfigError, match="config key 'eval.compute_estimate'") as err:
        validate(_eval_cfg(["eval.backend=vllm", "eval.compute_estimate=true"]))
    for advice in ("eval.backend=hf", "eval.compute_estimate=false"):
        assert advice in str(err.value)
        validate(_eval_cfg(["eval.backend=vllm", "eval.compute_estimate=true", advice]))


def test_the_package_imports_without_vllm(tiny, monkeypatch):
    import exp3rt.inference.vllm_backend as backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` fails
    importlib.reload(backend)  # nothing at module level needs it
    tcfg = _student_cfg(tiny[0])
    with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
        backend.load_vllm_student(tcfg, tiny[0], OmegaConf.structured(EvalConf(backend="vllm")))
