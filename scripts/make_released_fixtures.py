"""Fixtures in the layout of the SD-RPN authors' released artifacts (issue 12).

Writes into sdrpn-train/tests/fixtures/released/:

- labels-7b-style.pkl: a pseudo-label pickle as LLaVA/llava/eval/model_vqa_label.py
  (YuHengsss/SD-RPN 00876ac) writes it for 7B: one list of dicts with keys
  question_id, prompt, text, image, sink_attn, grounding_attn_o2i, grounding_attn_q2i
  (l.175-181), float16 maps (ana_utils.py:121), the grounding map multiplied in place
  by (sink_attn < 1e-3) (l.142-143), pickle.dump at the default protocol (4). Maps are
  over the 6x6 grid of sdrpn-llava/tests/fixtures/tiny-llava and name its test images,
  so `sdrpn train` can run on the import. Bad records follow the good ones; each is
  named in the .expected.json next to it.
- labels-13b-style{,-protocol2,-protocol5}.pkl: the 13B branch (l.144-170): float64
  maps (np.zeros accumulation), no grounding_attn_q2i key; one record with a 2-D
  Fortran-order float32 map (accepted too). The same records at protocols 4, 2 and 5.
- labels-stream.pkl: 2,100 records (three APPENDS batches of CPython's 1,000) over a
  2x2 grid, values a function of the index (checked in Rust without a sidecar).
- *.expected.json: what the importer must produce (maps widened to float32).

And RPN checkpoints in the released key layouts (docs/RELEASED_ARTIFACTS.md), from the
weights of sdrpn-llava/tests/fixtures/tiny-llava and sdrpn-qwen/tests/fixtures/tiny-qwen
with seeded random twig layers (K = 2, T = 2 on the 4-layer models):
- rpn-llava-7b-style/: a "-filled" merged model as migrate_weights.py saves it: the
  original LLaVA key layout (model.layers, model.mm_projector, model.vision_tower.
  vision_tower, lm_head; llava_llama.py:42-50) plus model.twig_layers.*, model.twig_norm,
  twig_head (llama_src.py:1115-1121, 1513), float16, in two shards with an index.
- rpn-llava-13b-style/: a trained-only file (llava_llama.py:200-245): layers [:K+T], no
  model.norm, no lm_head, bfloat16, one file.
- rpn-qwen-style/: Qwen2.5-VL twig keys (modeling_qwen2_5_vl.py:1102-1108, 1776) with q/k/v
  biases and a twig_norm the Qwen RPN does not use; float32; the base layers are left out
  (the importer reads only twig keys), to keep the fixture small.

Needs numpy only (pinned in scripts/requirements-fixtures.txt: numpy 2.4.6).
Run from the repo root: python3 scripts/make_released_fixtures.py
A re-run reproduces every file byte for byte (fixed seeds, no timestamps).
"""

import json
import os
import pickle
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

OUT = os.path.join("sdrpn-train", "tests", "fixtures", "released")
GRID = (6, 6)
IMAGES = ["images/wide.png", "images/tall.png", "images/big.png"]


def attention_like(rng, n, dtype):
    """A softmax-like row over n visual tokens, with a few sink-sized entries."""
    x = rng.random(n) ** 4
    x[rng.integers(0, n, 2)] += 3.0
    return (x / x.sum()).astype(dtype)


def seven_b_records(rng):
    n = GRID[0] * GRID[1]
    good = []
    for i in range(8):
        # float16 throughout, as model_vqa_label.py's 7B branch.
        o2i = attention_like(rng, n, np.float16)
        q2i = attention_like(rng, n, np.float16)
        sink = (attention_like(rng, n, np.float16) * np.float16(0.02)).astype(np.float16)
        grounding = o2i
        grounding *= (sink < 1e-3).astype(float)  # l.142-143: in place, stays float16
        assert grounding.dtype == np.float16
        good.append({
            "question_id": str(1000 + 7 * i),
            "prompt": f"What is written on sign {i}?\nAnswer the question using a single word or phrase.",
            "text": f"word {i}",
            "image": IMAGES[i % len(IMAGES)],
            "sink_attn": sink,
            "grounding_attn_o2i": o2i,
            "grounding_attn_q2i": q2i,
        })
    template = good[0]
    bad = []

    def variant(qid, reason, **change):
        r = dict(template, question_id=qid)
        for k, v in change.items():
            if v is None:
                del r[k]
            else:
                r[k] = v
        bad.append((r, reason))

    variant("bad-no-sink", "no sink_attn", sink_attn=None)
    variant("bad-size", "grounding_attn_o2i has shape [35]",
            grounding_attn_o2i=np.zeros(35, np.float16))
    nan = template["sink_attn"].copy()
    nan[4] = np.nan
    variant("bad-nan", "sink_attn holds NaN at 4", sink_attn=nan)
    variant("bad-prompt", "prompt is a int, not a string", prompt=5)
    variant("bad-dtype", "only f2, f4 and f8 arrays",
            sink_attn=np.zeros(n, np.int64))
    variant(template["question_id"], "a repeated question_id")
    bad.append(("not a record", "a str, not a dict"))
    return good, bad


def thirteen_b_records(rng):
    n = GRID[0] * GRID[1]
    records = []
    for i in range(4):
        o2i = np.zeros(n)
        s = np.zeros(n)
        for _ in range(3):
            o2i += attention_like(rng, n, np.float16)
        o2i /= 3
        for _ in range(2):
            s += attention_like(rng, n, np.float16) * 0.01
        s /= 2
        assert o2i.dtype == np.float64
        records.append({
            "question_id": str(20 + i),
            "prompt": f"Which colour is object {i}?",
            "text": ["red", "green", "blue", "grey"][i],
            "image": IMAGES[(i + 1) % len(IMAGES)],
            "sink_attn": s,
            "grounding_attn_o2i": o2i,
        })
    # A 2-D float32 map stored column-major: read back in row-major order.
    records[3]["grounding_attn_o2i"] = np.asfortranarray(
        records[3]["grounding_attn_o2i"].astype(np.float32).reshape(GRID))
    return records


def stream_records():
    records = []
    for i in range(2100):
        base = np.float16(i % 97) / np.float16(8)
        records.append({
            "question_id": str(i),
            "prompt": f"q{i}",
            "text": "a",
            "image": "x.png",
            "sink_attn": np.array([base, 0, 0, 1], np.float16),
            "grounding_attn_o2i": np.array([0, base, i % 5, 2], np.float16),
        })
    return records


def expected(records, skipped):
    def maps(r):
        g = np.asarray(r["grounding_attn_o2i"], dtype=np.float32).reshape(-1)
        return [float(v) for v in g], [float(v) for v in np.asarray(r["sink_attn"], np.float32).reshape(-1)]

    out = []
    for r in records:
        g, s = maps(r)
        out.append({
            "question_id": r["question_id"], "question": r["prompt"], "answer": r["text"],
            "image": r["image"], "grounding": g, "sink": s,
        })
    return {"grid": f"{GRID[0]}x{GRID[1]}", "records": out, "skipped": skipped}


def dump(name, obj, protocol):
    with open(os.path.join(OUT, name), "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


TWIG_K, TWIG_T = 2, 2
LLAVA_FIXTURE = os.path.join("sdrpn-llava", "tests", "fixtures", "tiny-llava")
QWEN_FIXTURE = os.path.join("sdrpn-qwen", "tests", "fixtures", "tiny-qwen")


def twig_layer(rng, prefix, d, mlp, q_out, kv_out, dtype, bias):
    """One decoder layer's tensors, PyTorch layout [out, in], values exact in dtype."""
    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float16).astype(dtype)
    t = {
        f"{prefix}.input_layernorm.weight": (1 + w(d)).astype(dtype),
        f"{prefix}.post_attention_layernorm.weight": (1 + w(d)).astype(dtype),
        f"{prefix}.self_attn.q_proj.weight": w(q_out, d),
        f"{prefix}.self_attn.k_proj.weight": w(kv_out, d),
        f"{prefix}.self_attn.v_proj.weight": w(kv_out, d),
        f"{prefix}.self_attn.o_proj.weight": w(d, q_out),
        f"{prefix}.mlp.gate_proj.weight": w(mlp, d),
        f"{prefix}.mlp.up_proj.weight": w(mlp, d),
        f"{prefix}.mlp.down_proj.weight": w(d, mlp),
    }
    if bias:
        t[f"{prefix}.self_attn.q_proj.bias"] = w(q_out)
        t[f"{prefix}.self_attn.k_proj.bias"] = w(kv_out)
        t[f"{prefix}.self_attn.v_proj.bias"] = w(kv_out)
    return t


def to_bf16_exact(a):
    """Rounds float32 values to bfloat16-representable ones (kept as float32 arrays)."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + 0x8000) & 0xFFFF0000).view(np.float32)


def original_llava_layout(hf):
    """llava-hf keys -> the original LLaVA repository's keys."""
    out = {}
    for k, v in hf.items():
        if k.startswith("language_model.model."):
            k = "model." + k[len("language_model.model."):]
        elif k.startswith("language_model.lm_head."):
            k = "lm_head." + k[len("language_model.lm_head."):]
        elif k.startswith("multi_modal_projector.linear_1."):
            k = "model.mm_projector.0." + k.split(".")[-1]
        elif k.startswith("multi_modal_projector.linear_2."):
            k = "model.mm_projector.2." + k.split(".")[-1]
        elif k.startswith("vision_tower."):
            k = "model.vision_tower.vision_tower." + k[len("vision_tower."):]
        out[k] = v
    return out


def llava_config(hf_config, **extra):
    text = hf_config["text_config"]
    c = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
        "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text["num_key_value_heads"],
        "num_hidden_layers": text["num_hidden_layers"], "rms_norm_eps": text["rms_norm_eps"],
        "vocab_size": text["vocab_size"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "image_aspect_ratio": "pad",
        # train.py:955-962
        "enable_twig": True, "twig_K": TWIG_K, "twig_T": TWIG_T, "roi_branch": True,
        "roi_source": "qk", "roi_loss": "bce", "roi_super_type": "v1", "roi_multi_head": False,
    }
    c.update(extra)
    return c


def write_checkpoint(name, tensors, config, shards=1):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
        f.write("\n")
    keys = sorted(tensors)
    if shards == 1:
        save_file({k: tensors[k] for k in keys}, os.path.join(folder, "model.safetensors"))
        return
    # The twig keys in the last shard, as save_pretrained fills shards in key order.
    base = [k for k in keys if "twig" not in k]
    twig = [k for k in keys if "twig" in k]
    weight_map = {}
    for i, part in enumerate([base, twig]):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, os.path.join(folder, file))
        weight_map.update({k: file for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1, sort_keys=True)
        f.write("\n")


def rpn_checkpoints():
    hf = load_file(os.path.join(LLAVA_FIXTURE, "model.safetensors"))
    with open(os.path.join(LLAVA_FIXTURE, "config.json")) as f:
        hf_config = json.load(f)
    text = hf_config["text_config"]
    d, mlp = text["hidden_size"], text["intermediate_size"]
    q_out = text["num_attention_heads"] * text["head_dim"]
    kv_out = text["num_key_value_heads"] * text["head_dim"]

    # 7B style: the whole model plus the twig keys, float16, two shards.
    rng = np.random.default_rng(7)
    merged = original_llava_layout(hf)
    for i in range(TWIG_T):
        merged.update(twig_layer(rng, f"model.twig_layers.{i}", d, mlp, q_out, kv_out, np.float32, False))
    merged["model.twig_norm.weight"] = (1 + rng.standard_normal(d) * 0.1).astype(np.float16).astype(np.float32)
    merged["twig_head.weight"] = merged["lm_head.weight"]
    merged = {k: v.astype(np.float16) for k, v in merged.items()}
    write_checkpoint("rpn-llava-7b-style", merged, llava_config(hf_config, torch_dtype="float16"), shards=2)

    # 13B style: trained layers only (no model.norm, no lm_head), bfloat16.
    rng = np.random.default_rng(13)
    trained = {k: v for k, v in original_llava_layout(hf).items()
               if k not in ("model.norm.weight", "lm_head.weight")
               and not any(k.startswith(f"model.layers.{n}.") for n in range(TWIG_K + TWIG_T, 64))}
    for i in range(TWIG_T):
        trained.update(twig_layer(rng, f"model.twig_layers.{i}", d, mlp, q_out, kv_out, np.float32, False))
    trained["model.twig_norm.weight"] = (1 + rng.standard_normal(d) * 0.1).astype(np.float32)
    trained = {k: to_bf16_exact(v) for k, v in trained.items()}
    # safetensors.numpy cannot write bfloat16: store the bf16 bit patterns by hand.
    write_checkpoint("rpn-llava-13b-style", {}, llava_config(hf_config, torch_dtype="bfloat16"))
    write_bf16(os.path.join(OUT, "rpn-llava-13b-style", "model.safetensors"), trained)

    # Qwen2.5-VL style: twig keys with biases, float32.
    with open(os.path.join(QWEN_FIXTURE, "config.json")) as f:
        q_config = json.load(f)
    qt = q_config["text_config"]
    d, mlp = qt["hidden_size"], qt["intermediate_size"]
    head_dim = d // qt["num_attention_heads"]
    q_out, kv_out = qt["num_attention_heads"] * head_dim, qt["num_key_value_heads"] * head_dim
    rng = np.random.default_rng(25)
    qwen = {"model.embed_tokens.weight": load_file(os.path.join(QWEN_FIXTURE, "model.safetensors"))["model.embed_tokens.weight"]}
    for i in range(TWIG_T):
        qwen.update(twig_layer(rng, f"model.twig_layers.{i}", d, mlp, q_out, kv_out, np.float32, True))
    qwen["model.twig_norm.weight"] = np.ones(d, np.float32)
    qwen["twig_head.weight"] = qwen["model.embed_tokens.weight"]
    config = dict(q_config, enable_twig=True, twig_K=TWIG_K, twig_T=TWIG_T, roi_branch=True,
                  roi_source="qk", roi_loss="bce", roi_super_type="v1", roi_multi_head=False)
    write_checkpoint("rpn-qwen-style", qwen, config)


def write_bf16(path, tensors):
    """A safetensors file of BF16 tensors (the format: 8-byte header length, JSON, data)."""
    header, data, offset = {}, [], 0
    for k in sorted(tensors):
        raw = (tensors[k].astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[k] = {"dtype": "BF16", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(b"".join(data))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(12)
    good, bad = seven_b_records(rng)
    items = good + [r for r, _ in bad]
    dump("labels-7b-style.pkl", items, 4)
    skipped = [[r["question_id"] if isinstance(r, dict) else f"item {len(good) + i}", why]
               for i, (r, why) in enumerate(bad)]
    write_json("labels-7b-style.expected.json", expected(good, skipped))

    thirteen = thirteen_b_records(rng)
    for suffix, protocol in [("", 4), ("-protocol2", 2), ("-protocol5", 5)]:
        dump(f"labels-13b-style{suffix}.pkl", thirteen, protocol)
    write_json("labels-13b-style.expected.json", expected(thirteen, []))

    dump("labels-stream.pkl", stream_records(), 4)
    rpn_checkpoints()
    print("numpy", np.__version__, "python", sys.version.split()[0])


if __name__ == "__main__":
    main()
