"""Regenerate the shipped corpus, SFT data and tokenizer (``python -m pai_patch.assets.build_assets``).

The project must train, fine-tune and evaluate offline, so it ships its own small,
deterministic data: a templated bilingual corpus (facts, arithmetic, short stories)
that a tiny model can visibly learn, alpaca-style instruction data drawn from the
same world, and a byte-level BPE tokenizer trained on it.  Everything is seeded, so
rerunning this script reproduces the committed files byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
CORPUS = ASSETS / "corpus"
TOKENIZER = ASSETS / "tokenizer"
SEED = 20241125
VOCAB_SIZE = 2048

NAMES = ["Ada", "Bo", "Chen", "Dara", "Eli", "Fang", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lin", "Mei", "Nia", "Omar", "Ping"]
PLACES = ["the river", "the market", "the library", "the hills", "the harbor", "the garden", "the station", "the school"]
THINGS = ["apples", "books", "kites", "lamps", "maps", "pens", "shells", "stones", "tea cups", "violins"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "purple", "orange"]
ANIMALS = {"cat": "meows", "dog": "barks", "cow": "moos", "duck": "quacks", "lion": "roars", "bee": "buzzes", "owl": "hoots", "horse": "neighs"}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "China": "Beijing", "Italy": "Rome", "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Canada": "Ottawa", "Spain": "Madrid", "India": "New Delhi"}
ZH_CAPITALS = {"中国": "北京", "日本": "东京", "法国": "巴黎", "意大利": "罗马", "埃及": "开罗", "西班牙": "马德里"}
ZH_NUM = "零一二三四五六七八九十"


def _story(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    place, thing, color = rng.choice(PLACES), rng.choice(THINGS), rng.choice(COLORS)
    n = rng.randint(2, 9)
    return (
        f"{a} went to {place} with {b}. They found {n} {color} {thing}. "
        f"{a} kept {n - 1} of them and gave one to {b}. {b} said thank you, and they walked home before dark."
    )


def _fact(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        country = rng.choice(list(CAPITALS))
        return f"The capital of {country} is {CAPITALS[country]}."
    if kind == 1:
        animal = rng.choice(list(ANIMALS))
        return f"The {animal} {ANIMALS[animal]}. Every {animal} {ANIMALS[animal]} when it is happy."
    if kind == 2:
        country = rng.choice(list(ZH_CAPITALS))
        return f"{country}的首都是{ZH_CAPITALS[country]}。"
    x, y = rng.randint(0, 5), rng.randint(0, 5)
    return f"{ZH_NUM[x]}加{ZH_NUM[y]}等于{ZH_NUM[x + y]}。"


def _arithmetic(rng: random.Random) -> str:
    x, y = rng.randint(0, 50), rng.randint(0, 50)
    return f"{x} plus {y} equals {x + y}. {x + y} minus {y} equals {x}."


def pretrain_documents(count: int, rng: random.Random) -> list[str]:
    makers = (_story, _fact, _arithmetic)
    return [" ".join(rng.choice(makers)(rng) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def _qa(rng: random.Random) -> tuple[str, str, list[str]]:
    """One question with its answer and three wrong choices (used for SFT and the eval task)."""
    kind = rng.randrange(4)
    if kind == 0:
        country = rng.choice(list(CAPITALS))
        wrong = rng.sample([c for c in CAPITALS.values() if c != CAPITALS[country]], 3)
        return f"What is the capital of {country}?", CAPITALS[country], wrong
    if kind == 1:
        animal = rng.choice(list(ANIMALS))
        wrong = rng.sample([s for s in ANIMALS.values() if s != ANIMALS[animal]], 3)
        return f"What sound does a {animal} make?", ANIMALS[animal], wrong
    if kind == 2:
        country = rng.choice(list(ZH_CAPITALS))
        wrong = rng.sample([c for c in ZH_CAPITALS.values() if c != ZH_CAPITALS[country]], 3)
        return f"{country}的首都是哪里？", ZH_CAPITALS[country], wrong
    x, y = rng.randint(0, 50), rng.randint(0, 50)
    wrong = rng.sample([v for v in range(max(0, x + y - 9), x + y + 10) if v != x + y], 3)
    return f"What is {x} plus {y}?", str(x + y), [str(w) for w in wrong]


def sft_records(count: int, rng: random.Random) -> list[dict]:
    records = []
    for _ in range(count):
        question, answer, wrong = _qa(rng)
        records.append({"instruction": question, "input": "", "output": answer, "choices": wrong})
    return records


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(TOKENIZER))


def main() -> None:
    rng = random.Random(SEED)
    CORPUS.mkdir(parents=True, exist_ok=True)
    docs = pretrain_documents(6000, rng)
    write_jsonl(CORPUS / "pretrain.jsonl", [{"text": d} for d in docs])
    train, valid = sft_records(3000, rng), sft_records(300, rng)
    for name, rows in (("sft_train.json", train), ("sft_valid.json", valid)):
        (CORPUS / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_jsonl(CORPUS / "prompts.jsonl", [{"prompt": r["instruction"]} for r in random.Random(7).sample(valid, 6)])
    sft_text = [f"{r['instruction']} {r['output']}" for r in train]
    train_tokenizer(docs + sft_text)


if __name__ == "__main__":
    main()
