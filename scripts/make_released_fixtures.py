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

Needs numpy only (pinned in scripts/requirements-fixtures.txt: numpy 2.4.6).
Run from the repo root: python3 scripts/make_released_fixtures.py
A re-run reproduces every file byte for byte (fixed seeds, no timestamps).
"""

import json
import os
import pickle
import sys

import numpy as np

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
    print("numpy", np.__version__, "python", sys.version.split()[0])


if __name__ == "__main__":
    main()
