#!/usr/bin/env python3
"""Generate the HF-transformers reference fixtures for the sdrpn-qwen tests (Qwen2.5-VL).

Runs by hand (not in CI), like scripts/make_fixtures.py (the LLaVA fixtures), whose
helpers it imports. Needs torch + transformers pinned in scripts/requirements-fixtures.txt
and torchvision (transformers 4.57's Qwen2_5_VLProcessor cannot be built without a
video processor, and Qwen2VLVideoProcessor needs torchvision; the image processor used
here is the slow PIL `Qwen2VLImageProcessor`, named explicitly, so torchvision does not
touch any pixel). Everything is seeded and single-threaded, so a re-run reproduces the
same bytes with the same versions.

    python3 -m venv /work/refenv
    /work/refenv/bin/pip install -r scripts/requirements-fixtures.txt torchvision==0.24.1
    nice -n 10 /work/refenv/bin/python scripts/make_qwen_fixtures.py   # from the repo root, ~15 s

Output: sdrpn-qwen/tests/fixtures/ (see the README.md there).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CLIP_MEAN, CLIP_STD, CORPUS as LLAVA_CORPUS, MIN_MARGIN  # noqa: E402
from make_fixtures import half_exact, make_image, normalize_u8, size_of, write_ref  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
)

try:
    from transformers import Qwen2VLVideoProcessor  # noqa: E402

    Qwen2VLVideoProcessor()  # raises without torchvision
except ImportError as e:
    sys.exit(f"make_qwen_fixtures.py needs torchvision (pip install torchvision==0.24.1): {e}")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

PATCH = 14
MERGE = 2
TEMPORAL = 2
FACTOR = PATCH * MERGE  # 28
MIN_PIXELS = 28 * 28 * 4  # 3136
MAX_PIXELS = 28 * 28 * 48  # 37632

# Qwen2.5-VL-7B-Instruct's chat template (chat_template.json of the Hub repo, verbatim).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (tokenizer.json of every Qwen2/2.5 model).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
# Qwen2.5's added tokens 151643..151658 in the same order (ids here: vocab size + i).
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
NON_SPECIAL_ADDED = ["<tool_call>", "</tool_call>"]  # added, but special=False (as in Qwen2.5)
TRAINED_MERGES = 200

TEXT_CFG = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=86,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    max_position_embeddings=1024,
    use_sliding_window=False,
    attention_dropout=0.0,
)
VISION_CFG = dict(
    depth=4,
    hidden_size=32,
    num_heads=4,
    intermediate_size=64,
    hidden_act="silu",
    patch_size=PATCH,
    spatial_merge_size=MERGE,
    temporal_patch_size=TEMPORAL,
    window_size=56,
    fullatt_block_indexes=[1, 3],
    out_hidden_size=64,
    in_channels=3,
    tokens_per_second=2,
)

MAX_NEW_TOKENS = 8
NEWLAYOUT_DTYPE = torch.bfloat16
TIED_DTYPE = torch.bfloat16
TIED_SHARD = "150KB"
# With lm_head = embed_tokens, a random model's logits favour the token just fed in (its embedding
# rides the residual stream to the output), so greedy decoding repeats it. Smaller embeddings let
# the layers dominate the residual stream.
TIED_EMBED_SCALE = 0.25
QUESTION = "What is in the picture?"


def corpus():
    """Qwen chat turns (without the special tokens, which are never merged) from the LLaVA corpus."""
    out = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "Picture 1: Video 1: "]
    for line in LLAVA_CORPUS:
        if "USER: " in line and " ASSISTANT: " in line:
            q, a = line.split("USER: ", 1)[1].split(" ASSISTANT: ", 1)
            out += [f"user\n{q}", f"assistant\n{a}\n"]
        else:
            out.append(line)
    return out


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer():
    """Qwen2-style byte-level BPE (NFC, Qwen split regex + ByteLevel, no BOS) trained on corpus()."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=256 + TRAINED_MERGES,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    # Write decoder/post-processor exactly as Qwen's tokenizer.json has them.
    data = json.loads(tok.to_str())
    data["decoder"] = dict(BYTELEVEL)
    data["post_processor"] = dict(BYTELEVEL)
    tok = Tokenizer.from_str(json.dumps(data))
    assert tok.get_vocab_size() == 256 + TRAINED_MERGES, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in NON_SPECIAL_ADDED])
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
        model_max_length=1024,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def token_ids(tok):
    return {s: tok.convert_tokens_to_ids(s) for s in SPECIALS + NON_SPECIAL_ADDED}


def build_processor(tok):
    ip = Qwen2VLImageProcessor(
        do_resize=True,
        resample=3,  # PIL.Image.BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=PATCH,
        temporal_patch_size=TEMPORAL,
        merge_size=MERGE,
    )
    vp = Qwen2VLVideoProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        patch_size=PATCH,
        temporal_patch_size=TEMPORAL,
        merge_size=MERGE,
    )
    return Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=CHAT_TEMPLATE)


# --------------------------------------------------------------------------- model


def make_config(tok, tied):
    ids = token_ids(tok)
    text = dict(TEXT_CFG, vocab_size=len(tok), tie_word_embeddings=tied,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    return Qwen2_5_VLConfig(
        text_config=copy.deepcopy(text),
        vision_config=dict(VISION_CFG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tied,
    )


def init_weights(model, seed, embed_scale=1.0):
    """Deterministic half-exact init scaled so activations stay O(1) and logits have margins."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())  # tied lm_head is listed once, as embed_tokens
    for name in sorted(params):
        p = params[name]
        shape = p.shape
        randn = torch.randn(shape, generator=g, dtype=torch.float32)
        if p.ndim == 1 and name.endswith("bias"):
            val = 0.1 * randn
        elif p.ndim == 1:  # every 1-D weight is an RMSNorm scale (norm1/2, ln_q, *_layernorm, norm)
            val = 1.0 + 0.1 * randn
        elif name.endswith("patch_embed.proj.weight"):
            val = randn / np.sqrt(np.prod(shape[1:]))
        elif name.endswith("embed_tokens.weight"):
            val = embed_scale * randn
        elif name.endswith("lm_head.weight"):
            val = 3.0 * randn / np.sqrt(shape[1])
        elif p.ndim == 2:
            gain = 1.3 if any(s in name for s in ("q_proj", "k_proj", "attn.qkv")) else 1.0
            val = gain * randn / np.sqrt(shape[1])
        else:
            raise ValueError(f"no init rule for {name} {tuple(shape)}")
        with torch.no_grad():
            p.copy_(half_exact(val))


def build_model(tok, seed, tied):
    cfg = make_config(tok, tied)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, seed, TIED_EMBED_SCALE if tied else 1.0)
    model.eval()
    shared = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert shared == tied, (shared, tied)
    assert model.model.visual.config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "eager"
    model.generation_config = generation_config(tok)
    return model


def generation_config(tok):
    ids = token_ids(tok)
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
        num_beams=1,
    )


# --------------------------------------------------------------------------- preprocessing restated


def smart_resize_ref(height, width, factor=FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """Restatement of qwen2_vl.image_processing_qwen2_vl.smart_resize. NB Python round() is
    round-half-to-even (round(2.5) == 2), and the max/min branches use floor/ceil."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio > 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_u8(image):
    """PIL bicubic resize to smart_resize's size. -> uint8 [H', W', 3]."""
    w, h = image.size
    rh, rw = smart_resize_ref(h, w)
    return torch.from_numpy(np.asarray(image.resize((rw, rh), Image.BICUBIC)).copy())


def patchify(chw):
    """[3,H,W] f32 -> [gh*gw, 3*2*14*14] exactly like Qwen2VLImageProcessor._preprocess for one image:
    the frame is repeated to temporal_patch_size=2, rows are patches in merge-block order
    (block row, block col, row in block, col in block), columns (channel, t, y, x)."""
    c, h, w = chw.shape
    gh, gw = h // PATCH, w // PATCH
    x = chw.unsqueeze(0).expand(TEMPORAL, c, h, w)
    x = x.reshape(1, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, c * TEMPORAL * PATCH * PATCH).contiguous()


def rot_pos_ids(gh, gw):
    """(row, col) of every patch in processor (merge-block) order. -> i64 [gh*gw, 2]"""
    hp = torch.arange(gh).unsqueeze(1).expand(gh, gw)
    wp = torch.arange(gw).unsqueeze(0).expand(gh, gw)
    f = lambda t: t.reshape(gh // MERGE, MERGE, gw // MERGE, MERGE).permute(0, 2, 1, 3).flatten()  # noqa: E731
    return torch.stack([f(hp), f(wp)], -1)


def window_index_ref(gh, gw, window=VISION_CFG["window_size"]):
    """Restatement of get_window_index for one image (t=1), without the -100 padding trick:
    windows of ws x ws merged tokens (ws = window/merge/patch = 2) in row-major window order,
    merged tokens row-major inside each window; partial windows at the right/bottom edge."""
    ws = window // MERGE // PATCH
    mh, mw = gh // MERGE, gw // MERGE
    index, cu = [], [0]
    for wy in range(0, mh, ws):
        for wx in range(0, mw, ws):
            n = 0
            for y in range(wy, min(wy + ws, mh)):
                for x in range(wx, min(wx + ws, mw)):
                    index.append(y * mw + x)
                    n += 1
            cu.append(cu[-1] + n * MERGE * MERGE)
    return torch.tensor(index), torch.tensor(cu, dtype=torch.int32)


# --------------------------------------------------------------------------- references


@torch.inference_mode()
def run_case(model, processor, image, image_name, question):
    tok = processor.tokenizer
    cfg = model.config
    ids = token_ids(tok)
    image_id = cfg.image_token_id
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    input_ids, attn_mask = enc["input_ids"], enc["attention_mask"]
    pixel_values, grid = enc["pixel_values"], enc["image_grid_thw"]
    assert pixel_values.dtype == torch.float32 and grid.tolist()[0][0] == 1
    T = input_ids.shape[1]
    _, gh, gw = grid[0].tolist()
    n_img = gh * gw // (MERGE * MERGE)
    assert int((input_ids == image_id).sum()) == n_img, "one <|image_pad|> per merged token"
    pos = (input_ids[0] == image_id).nonzero()[:, 0]
    st = int(pos[0])
    assert torch.equal(pos, torch.arange(st, st + n_img))
    assert input_ids[0, st - 1] == ids["<|vision_start|>"] and input_ids[0, st + n_img] == ids["<|vision_end|>"]

    # ---- preprocessing restated (bit-exact)
    u8 = resized_u8(image)
    assert list(u8.shape) == [gh * PATCH, gw * PATCH, 3]
    chw = normalize_u8(u8)
    assert torch.equal(patchify(chw), pixel_values), "documented preprocessing == HF"

    # ---- vision tower internals
    visual = model.model.visual
    patch_embeds = visual.patch_embed(pixel_values)
    rot = visual.rot_pos_emb(grid)
    pids = rot_pos_ids(gh, gw)
    table = visual.rotary_pos_emb(max(gh, gw))
    assert torch.equal(rot, table[pids].flatten(1)), "rotary = [table[row], table[col]]"
    win_idx, cu_raw = visual.get_window_index(grid)
    cu_win = torch.unique_consecutive(torch.tensor(cu_raw, dtype=torch.int32))
    ref_idx, ref_cu = window_index_ref(gh, gw)
    assert torch.equal(win_idx, ref_idx) and torch.equal(cu_win, ref_cu), "documented window order"
    blocks = []
    hooks = [b.register_forward_hook(lambda m, i, o: blocks.append(o)) for b in visual.blocks]
    feats = torch.cat(model.model.get_image_features(pixel_values, grid), 0)
    for h in hooks:
        h.remove()
    assert len(blocks) == VISION_CFG["depth"]
    vblocks = torch.stack(blocks, 0)  # [depth, P, Dv], HF's internal (window) order
    # the merger runs in window order; HF then undoes the permutation with argsort(window_index)
    merged_w = visual.merger(vblocks[-1])
    assert torch.equal(feats, merged_w[torch.argsort(win_idx)])
    assert torch.equal(merged_w, feats[win_idx])

    # ---- M-RoPE positions
    position_ids, rope_deltas = model.model.get_rope_index(input_ids, grid, None, attention_mask=attn_mask)
    position_ids = position_ids[:, 0]  # [3, T]
    rope_deltas = rope_deltas.reshape(1)
    mh, mw = gh // MERGE, gw // MERGE
    exp = torch.arange(T).unsqueeze(0).repeat(3, 1)
    exp[:, st:st + n_img] = torch.stack([torch.zeros(n_img, dtype=torch.long),
                                         torch.arange(mh).repeat_interleave(mw),
                                         torch.arange(mw).repeat(mh)]) + st
    exp[:, st + n_img:] = torch.arange(T - st - n_img) + st + max(mh, mw)
    assert torch.equal(position_ids, exp), "documented text/image positions"
    assert int(rope_deltas) == int(position_ids.max()) + 1 - T

    # ---- LM forward
    lm = model.model.language_model
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in lm.layers]
    out = model(input_ids=input_ids, attention_mask=attn_mask, pixel_values=pixel_values, image_grid_thw=grid,
                output_hidden_states=True, output_attentions=True, return_dict=True)
    for h in hooks:
        h.remove()
    hs = torch.stack(out.hidden_states, 0)[:, 0]  # [L+1,T,D]
    att = torch.stack(out.attentions, 0)[:, 0]  # [L,H,T,T]
    logits = out.logits[0]
    assert torch.equal(out.rope_deltas.reshape(1), rope_deltas)
    assert torch.equal(hs[0][pos], feats), "hidden_states[0] = embeddings with image features scattered in"
    text_pos = torch.ones(T, dtype=torch.bool)
    text_pos[pos] = False
    assert torch.equal(hs[0][text_pos], lm.embed_tokens(input_ids[0])[text_pos])
    for l in range(1, len(captured)):
        assert torch.equal(hs[l], captured[l - 1][0]), f"hidden_states[{l}]"
    assert torch.equal(hs[-1], lm.norm(captured[-1])[0]), "hidden_states[-1] = final norm"
    assert torch.allclose(att.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.equal(att.triu(1), torch.zeros_like(att)), "causal by sequence index"

    # ---- greedy generation
    gen = model.generate(
        input_ids=input_ids, attention_mask=attn_mask, pixel_values=pixel_values, image_grid_thw=grid,
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        output_attentions=True, output_scores=True, return_dict_in_generate=True,
    )
    gen_ids = gen.sequences[0, T:]
    N = gen_ids.shape[0]
    margins = []
    for sc in gen.scores:
        top = torch.topk(sc[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    assert torch.allclose(gen.scores[0][0], logits[-1], atol=1e-5)
    L, H = att.shape[0], att.shape[1]
    assert torch.allclose(gen.attentions[0][0][0], att[0], atol=1e-6), "generate prefill attentions == forward"
    dec = torch.zeros(max(N - 1, 0), L, H, T + N - 1)
    for j in range(N - 1):
        step = gen.attentions[j + 1]  # tuple over layers of [1,H,1,T+j+1]
        for l in range(L):
            row = step[l][0, :, -1, :]
            assert row.shape[-1] == T + j + 1
            dec[j, l, :, : T + j + 1] = row
    assert N <= 1 or torch.allclose(dec.sum(-1), torch.ones(()), atol=1e-5)
    # Generated token j (fed back at sequence index T+j) has M-RoPE position T+j+rope_deltas in
    # all three sections = what get_rope_index gives for the whole sequence (trailing text):
    full = gen.sequences[:, : T + N - 1]
    full_pos, full_delta = model.model.get_rope_index(full, grid, None, attention_mask=torch.ones_like(full))
    assert torch.equal(full_delta.reshape(1), rope_deltas)
    gen_pos = torch.arange(T, T + N - 1) + rope_deltas
    assert torch.equal(full_pos[:, 0, T:], gen_pos.unsqueeze(0).expand(3, -1))
    assert torch.equal(full_pos[:, 0, :T], position_ids)
    # ... and a cache-free forward over the whole sequence reproduces every decode step
    model.model.rope_deltas = None
    re = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values,
               image_grid_thw=grid, use_cache=False).logits[0]
    for j in range(N):
        assert torch.allclose(re[T - 1 + j], gen.scores[j][0], atol=1e-4), f"no-cache step {j}"

    t = {
        "input_ids": input_ids[0],
        "attention_mask": attn_mask[0],
        "image_grid_thw": grid,
        "pixel_values": pixel_values,
        "pixel_values_u8": u8.permute(2, 0, 1),
        "position_ids": position_ids,
        "rope_deltas": rope_deltas,
        "vision_patch_embeds": patch_embeds,
        "vision_rotary_pos_ids": pids,
        "vision_rotary_pos_emb": rot,
        "vision_window_index": win_idx,
        "vision_cu_window_seqlens": cu_win,
        "vision_hidden_block0": vblocks[0],
        "vision_hidden_blocks": vblocks,
        "image_features_projected": feats,
        "lm_hidden_states": hs,
        "lm_hidden_last": hs[-1],
        "lm_attentions": att,
        "lm_attentions_last_rows": att[:, :, -4:, :],
        "logits": logits,
        "logits_last": logits[-1],
        "gen_ids": gen_ids,
        "decode_attentions": dec,
    }
    t = {k: v.clone().contiguous() for k, v in t.items()}
    meta = {
        "prompt": prompt,
        "question": question,
        "image": image_name,
        "image_size_wh": f"{image.size[0]}x{image.size[1]}",
        "resized_wh": f"{gw * PATCH}x{gh * PATCH}",
        "grid_thw": json.dumps(grid[0].tolist()),
        "num_image_tokens": str(n_img),
        "image_token_id": str(image_id),
        "image_token_start": str(st),
        "prompt_len": str(T),
        "num_generated": str(N),
        "rope_deltas": str(int(rope_deltas)),
        "gen_text": tok.decode(gen_ids),
        "min_top1_margin": f"{min(margins):.6f}",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return t, meta, margins, logits


def acceptable(results, eot_id):
    """make_fixtures.find_seed's margin rule, plus: no <|endoftext|> (so that EOS = <|im_end|> and
    generation_config's [<|im_end|>, <|endoftext|>] give the same run) and >= 5 distinct tokens
    (no degenerate repetition)."""
    why = []
    for t, _, margins, _ in results:
        g = t["gen_ids"].tolist()
        if min(margins) < MIN_MARGIN:
            why.append(f"margin {min(margins):.4f}")
        if eot_id in g:
            why.append("<|endoftext|>")
        if len(set(g)) < 5:
            why.append(f"repetitive {g}")
    return why


def find_seed(build, cases_fn, base_seed, eot_id, tries=40):
    """First seed from base_seed whose cases are all acceptable()."""
    for seed in range(base_seed, base_seed + tries):
        model = build(seed)
        results = cases_fn(model)
        why = acceptable(results, eot_id)
        print(f"  seed {seed}: min margins per case {['%.4f' % min(r[2]) for r in results]}"
              + (f"; rejected: {', '.join(why)}" if why else ""))
        if not why:
            return seed, model
    raise RuntimeError("no acceptable seed")


FULL = ["input_ids", "attention_mask", "image_grid_thw", "pixel_values", "pixel_values_u8", "position_ids",
        "rope_deltas", "vision_patch_embeds", "vision_rotary_pos_ids", "vision_rotary_pos_emb",
        "vision_window_index", "vision_cu_window_seqlens", "vision_hidden_block0", "vision_hidden_blocks",
        "image_features_projected", "lm_hidden_states", "lm_attentions", "logits", "gen_ids",
        "decode_attentions"]
# b, c: no pixel_values (recompute them from pixel_values_u8, bit-exact as case a shows)
REDUCED = ["input_ids", "image_grid_thw", "pixel_values_u8", "position_ids", "rope_deltas",
           "vision_window_index", "vision_cu_window_seqlens", "vision_hidden_block0",
           "image_features_projected", "lm_hidden_last", "lm_attentions_last_rows", "logits_last", "gen_ids",
           "decode_attentions"]


# --------------------------------------------------------------------------- model directories


def compact_tokenizer_json(d):
    tj = os.path.join(d, "tokenizer.json")
    with open(tj, encoding="utf-8") as f:
        data = json.load(f)
    with open(tj, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))


def save_model_dir(model, processor, out, dtype=torch.float32, max_shard_size="1GB", save_jinja_files=True):
    if os.path.exists(out):
        shutil.rmtree(out)
    m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    m.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    processor.save_pretrained(out, save_jinja_files=save_jinja_files)
    compact_tokenizer_json(out)


def rename_to_newlayout(k):
    """save_pretrained's (Hub) names -> in-memory names of transformers 4.57."""
    if k.startswith("lm_head."):
        return k
    if k.startswith("visual."):
        return "model." + k
    if k.startswith("model."):
        return "model.language_model." + k[len("model."):]
    raise KeyError(k)


def flat_hub_config(nested, dtype_name):
    """The layout of the config.json files on the Hub (Qwen/Qwen2.5-VL-*-Instruct): text settings at
    top level, rope_scaling {"type": "mrope", ...}, vision_config nested, torch_dtype."""
    flat = {"architectures": ["Qwen2_5_VLForConditionalGeneration"]}
    text = dict(nested["text_config"])
    for k in ("architectures", "model_type", "dtype", "layer_types"):
        text.pop(k, None)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": list(TEXT_CFG["rope_scaling"]["mrope_section"])}
    flat.update(text)
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        flat[k] = nested[k]
    flat["tie_word_embeddings"] = text.get("tie_word_embeddings", False)
    flat["vision_token_id"] = nested["vision_start_token_id"] + 2  # <|vision_pad|>, unused by HF
    flat["model_type"] = "qwen2_5_vl"
    flat["torch_dtype"] = dtype_name
    flat["transformers_version"] = nested["transformers_version"]
    vis = dict(nested["vision_config"])
    vis.pop("model_type", None)
    vis.pop("initializer_range", None)
    flat["vision_config"] = vis
    return dict(sorted(flat.items()))


def load_dir(d):
    m, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        d, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return m.eval()


def read_state_dict(d):
    sd = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, f)))
    return sd


def check_saved_dir(d, image, expect_ids, expect_pv):
    """The directory loads with the Auto* classes, renders the same prompt and preprocesses alike."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    p = AutoProcessor.from_pretrained(d, use_fast=False)
    assert type(p).__name__ == "Qwen2_5_VLProcessor", type(p)
    assert type(p.image_processor).__name__ == "Qwen2VLImageProcessor", type(p.image_processor)
    t = AutoTokenizer.from_pretrained(d)
    assert type(t).__name__ == "Qwen2TokenizerFast", type(t)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = p.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == prompt
    enc = p(text=[prompt], images=[image], return_tensors="pt")
    assert torch.equal(enc["input_ids"][0], expect_ids)
    assert torch.equal(enc["pixel_values"], expect_pv)
    default_ip = type(AutoImageProcessor.from_pretrained(d)).__name__
    return prompt, default_ip


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("sdrpn-qwen", "tests", "fixtures"))
    args = ap.parse_args()
    out = args.out
    import torchvision

    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"torchvision {torchvision.__version__}, tokenizers {__import__('tokenizers').__version__}, "
                f"safetensors {__import__('safetensors').__version__}, pillow {Image.__version__}, "
                f"numpy {np.__version__}, python {sys.version.split()[0]}")
    print("versions:", versions)
    if os.path.isdir(out):  # remove what an earlier run generated (README.md stays)
        for sub in ["images", "reference"] + [d for d in os.listdir(out) if d.startswith("tiny-qwen")]:
            if os.path.isdir(os.path.join(out, sub)):
                shutil.rmtree(os.path.join(out, sub))
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "reference"), exist_ok=True)
    log = {"versions": versions}

    # ---- tokenizer + processor
    tok = build_tokenizer()
    proc = build_processor(tok)
    ids = token_ids(tok)
    print(f"tokenizer: vocab {len(tok)} (BPE {256 + TRAINED_MERGES}), added {ids}")
    log["token_ids"] = ids
    log["vocab_size"] = len(tok)
    probe = "<|im_start|>user\nWhat is in the picture?<|im_end|>\n<|im_start|>assistant\n"
    log["tokenize_probe"] = {"text": probe, "ids": tok(probe).input_ids,
                             "tokens": tok.convert_ids_to_tokens(tok(probe).input_ids)}

    # ---- images
    images = {
        "wide.png": make_image(150, 90, 11),
        "big.png": make_image(320, 180, 12, noise=6, noise_frac=0.5),
        "tall.png": make_image(70, 130, 13),
    }
    for name, im in images.items():
        im.save(os.path.join(out, "images", name), optimize=False)
    images = {n: Image.open(os.path.join(out, "images", n)).convert("RGB") for n in images}

    # smart_resize table (for a Rust port of it), including the round-half-even and min/max branches
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    sr = {}
    for h, w in [(90, 150), (180, 320), (130, 70), (42, 70), (70, 42), (14, 14), (20, 30), (1, 100), (50, 50),
                 (200, 300), (1000, 1000), (2000, 30), (126, 98), (154, 182), (28, 28 * 48), (84, 140)]:
        hw = smart_resize(h, w, factor=FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        assert tuple(hw) == smart_resize_ref(h, w)
        sr[f"{h}x{w}"] = list(hw)
    log["smart_resize_hw"] = sr

    cases_a = [("a_wide", "wide.png"), ("b_big", "big.png")]
    case_c = ("c_tall_tied", "tall.png")

    def run_main(model):
        return [run_case(model, proc, images[im], im, QUESTION) for _, im in cases_a]

    def run_tied(model):
        return [run_case(model, proc, images[case_c[1]], case_c[1], QUESTION)]

    # ---- tiny-qwen (f32, untied)
    print("tiny-qwen: searching a seed with clear greedy margins")
    seed, model = find_seed(lambda s: build_model(tok, s, tied=False), run_main, 3000, ids["<|endoftext|>"])
    d32 = os.path.join(out, "tiny-qwen")
    save_model_dir(model, proc, d32)
    sd32 = load_file(os.path.join(d32, "model.safetensors"))
    keys_saved = sorted(sd32)
    keys_memory = sorted(model.state_dict())
    model = load_dir(d32)
    results = run_main(model)
    ref = {}
    for (name, im), (t, meta, margins, lg) in zip(cases_a, results):
        meta["model"] = "tiny-qwen"
        meta["seed"] = str(seed)
        ref[name] = (t, lg)
        print(f"  case {name}: grid {meta['grid_thw']} T={meta['prompt_len']} gen={t['gen_ids'].tolist()} "
              f"{meta['gen_text']!r} margins={['%.4f' % m for m in margins]}")
        log[name] = {"margins": margins, "T": int(meta["prompt_len"]), "grid_thw": json.loads(meta["grid_thw"]),
                     "gen_ids": t["gen_ids"].tolist(), "rope_deltas": int(meta["rope_deltas"]),
                     "image_token_start": int(meta["image_token_start"]), "prompt": meta["prompt"],
                     "input_ids": t["input_ids"].tolist(),
                     "cu_window_seqlens": t["vision_cu_window_seqlens"].tolist()}
        write_ref(os.path.join(out, "reference", name + ".safetensors"),
                  {k: t[k] for k in (FULL if name == "a_wide" else REDUCED)}, meta)
    prompt_a, default_ip = check_saved_dir(d32, images["wide.png"], ref["a_wide"][0]["input_ids"],
                                           ref["a_wide"][0]["pixel_values"])
    log["auto_image_processor_default"] = default_ip
    print(f"  {d32}: Auto* load OK; AutoImageProcessor default class: {default_ip}")
    print("  rendered prompt (a):", repr(prompt_a))

    # ---- tiny-qwen-newlayout (bf16, in-memory key names)
    dnew = os.path.join(out, "tiny-qwen-newlayout")
    save_model_dir(model, proc, dnew, dtype=NEWLAYOUT_DTYPE)
    sdn = load_file(os.path.join(dnew, "model.safetensors"))
    os.remove(os.path.join(dnew, "model.safetensors"))
    save_file({rename_to_newlayout(k): v.contiguous() for k, v in sorted(sdn.items())},
              os.path.join(dnew, "model.safetensors"), metadata={"format": "pt"})
    assert sorted(rename_to_newlayout(k) for k in keys_saved) == keys_memory, "newlayout = in-memory keys"
    vsd = read_state_dict(dnew)
    assert all(v.dtype == NEWLAYOUT_DTYPE for v in vsd.values())
    assert all(torch.equal(vsd[rename_to_newlayout(k)].float(), v) for k, v in sd32.items()), "lossless"
    mnew = load_dir(dnew)
    t, meta, _, lg = run_case(mnew, proc, images["wide.png"], "wide.png", QUESTION)
    err = float((lg - ref["a_wide"][1]).abs().max())
    same = torch.equal(t["gen_ids"], ref["a_wide"][0]["gen_ids"])
    assert err == 0.0 and same, (err, same)
    print(f"  {dnew}: HF loads it (no missing/unexpected keys); case a max|logits - f32| = {err} , same gen_ids")
    log["newlayout_check"] = {"max_abs_logit_diff": err, "same_gen_ids": same}

    # ---- tiny-qwen-tied (bf16, tied, sharded, Hub-style flat config + legacy chat_template.json)
    print("tiny-qwen-tied: searching a seed with clear greedy margins")
    seed_t, model_t = find_seed(lambda s: build_model(tok, s, tied=True), run_tied, 4000, ids["<|endoftext|>"])
    dt = os.path.join(out, "tiny-qwen-tied")
    save_model_dir(model_t, proc, dt, dtype=TIED_DTYPE, max_shard_size=TIED_SHARD, save_jinja_files=False)
    with open(os.path.join(dt, "config.json")) as f:
        nested_t = json.load(f)
    flat = flat_hub_config(nested_t, "bfloat16")
    with open(os.path.join(dt, "config.json"), "w") as f:
        json.dump(flat, f, indent=2)
        f.write("\n")
    cfg_flat = Qwen2_5_VLConfig.from_pretrained(dt)
    # (a flat file's unknown top-level keys, here vision_token_id, land in text_config as extra attributes)
    skip = ("dtype", "architectures", "vision_token_id")
    for sub in ("text_config", "vision_config"):
        a = {k: v for k, v in getattr(cfg_flat, sub).to_dict().items() if k not in skip}
        b = {k: v for k, v in getattr(model_t.config, sub).to_dict().items() if k not in skip}
        assert a == b, (sub, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})
    shards = sorted(f for f in os.listdir(dt) if f.endswith(".safetensors"))
    assert len(shards) > 1, shards
    sdt = read_state_dict(dt)
    assert "lm_head.weight" not in sdt and all(v.dtype == TIED_DTYPE for v in sdt.values())
    model_t = load_dir(dt)
    assert model_t.lm_head.weight.data_ptr() == model_t.model.language_model.embed_tokens.weight.data_ptr()
    t, meta, margins, _ = run_tied(model_t)[0]
    meta["model"] = "tiny-qwen-tied"
    meta["seed"] = str(seed_t)
    print(f"  case {case_c[0]}: grid {meta['grid_thw']} T={meta['prompt_len']} gen={t['gen_ids'].tolist()} "
          f"{meta['gen_text']!r} margins={['%.4f' % m for m in margins]}")
    log[case_c[0]] = {"margins": margins, "T": int(meta["prompt_len"]), "grid_thw": json.loads(meta["grid_thw"]),
                      "gen_ids": t["gen_ids"].tolist(), "rope_deltas": int(meta["rope_deltas"]),
                      "image_token_start": int(meta["image_token_start"]),
                      "cu_window_seqlens": t["vision_cu_window_seqlens"].tolist()}
    write_ref(os.path.join(out, "reference", case_c[0] + ".safetensors"), {k: t[k] for k in REDUCED}, meta)
    check_saved_dir(dt, images["tall.png"], t["input_ids"], proc(text=[meta["prompt"]], images=[images["tall.png"]],
                                                                 return_tensors="pt")["pixel_values"])
    print(f"  {dt}: shards {shards}; flat config loads to the same text/vision config; lm_head tied on load")

    log.update({"seed_tiny_qwen": seed, "seed_tiny_qwen_tied": seed_t, "tied_shards": shards,
                "keys_saved_layout": keys_saved, "keys_new_layout": keys_memory,
                "config_nested_tiny_qwen": json.load(open(os.path.join(d32, "config.json"))),
                "shapes": {k: list(v.shape) for k, v in sorted(sd32.items())}})
    with open(os.path.join(out, "reference", "run_log.json"), "w") as f:
        json.dump(log, f, indent=1, ensure_ascii=False)
    for d in sorted(os.listdir(out)):
        print(f"  {d}: {size_of(os.path.join(out, d)) / 1e6:.3f} MB")
    total = size_of(out)
    print(f"total: {total / 1e6:.3f} MB")
    if total > 3_500_000:  # target ~3 MB; the briefed f32 model + full case a need 3.42 MB (README "Size")
        print("WARNING: over the 3.5 MB fixture budget")


if __name__ == "__main__":
    main()
