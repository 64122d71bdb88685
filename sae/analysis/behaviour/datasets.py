"""Contrastive behaviour data: one JSONL schema, and loaders that bring public sets into it.

Schema: one JSON object per line. Every record has `prompt` (the user turn, or plain text when
`chat` is false) and is one of two forms:

  pair      `matching` and `not_matching`: two completions of the same prompt, the first showing
            the behaviour. Single-token answers ("A" / "B") are read as a choice between two
            next tokens; longer completions as a log-likelihood margin.
  labelled  `label` (1 = the prompt shows or elicits the behaviour, 0 = it does not), e.g.
            harmful vs harmless instructions, or true vs false statements.

Optional fields: `id` (string, unique; defaults to the line number), `system` (system turn),
`assistant_prefix` (text the assistant turn starts with, e.g. "(" before a letter answer),
`chat` (default true: render through the tokenizer's chat template when it has one; false for
raw statements), `metric` (labelled records only: "refusal" measures P(refusal opening),
"none" measures nothing on the model and only ranks/probes; default "none").

Loaders for the sets in ../shared/data (see data/behaviour/README.md for sources and licences):
  - sycophancy `generate_dataset.json` (Panickssery et al. 2023, from Perez et al. 2022):
    A/B items; the prompt is the question, the assistant turn starts with "(" and the two
    completions are the letters, the matching one the answer agreeing with the user's view;
  - roleplaying deception (Apollo Research, Goldowsky-Dill et al. 2025): system = scenario,
    prompt = question, prefix = the answer prefix; matching = the deceptive completion;
  - true/false statement CSVs (`statement,label`; Azaria & Mitchell 2023, Marks & Tegmark 2023):
    labelled, no chat template;
  - refusal instruction lists (Arditi et al. 2024): harmful (label 1) and harmless (label 0).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...activations.tokens import DataError

METRICS = ("margin", "refusal", "none")


class BehaviourDataError(DataError):
    """A behaviour data file that does not fit the schema; the message says what to fix (a
    DataError, so the CLI prints it as a user error)."""


@dataclass
class BehaviourItem:
    """One record of the schema (see the module docstring)."""

    id: str
    """Unique id."""
    prompt: str
    """The user turn (or the whole text when `chat` is false)."""
    matching: str | None = None
    """Pair form: the completion that shows the behaviour."""
    not_matching: str | None = None
    """Pair form: the completion that does not."""
    label: int | None = None
    """Labelled form: 1 when the prompt shows or elicits the behaviour, else 0."""
    system: str | None = None
    """Optional system turn."""
    assistant_prefix: str = ""
    """Text the assistant turn starts with (after the chat template's generation prompt)."""
    chat: bool = True
    """Render through the chat template when the tokenizer has one."""
    metric: str = "margin"
    """margin (pairs), refusal or none (labelled)."""

    def __post_init__(self) -> None:
        is_pair = self.matching is not None or self.not_matching is not None
        if is_pair and (self.matching is None or self.not_matching is None or self.label is not None):
            raise BehaviourDataError(f"record {self.id!r}: a pair needs both `matching` and `not_matching` "
                                     "and no `label`.")
        if not is_pair and self.label not in (0, 1):
            raise BehaviourDataError(f"record {self.id!r}: give either `matching` + `not_matching`, or "
                                     f"`label` 0 or 1 (got label {self.label!r}).")
        if self.metric not in METRICS:
            raise BehaviourDataError(f"record {self.id!r}: metric must be one of {', '.join(METRICS)}, "
                                     f"got {self.metric!r}.")
        if is_pair and self.metric != "margin":
            raise BehaviourDataError(f"record {self.id!r}: pairs use metric 'margin', got {self.metric!r}.")
        if not is_pair and self.metric == "margin":
            self.metric = "none"

    @property
    def is_pair(self) -> bool:
        return self.matching is not None

    def to_record(self) -> dict[str, Any]:
        """The JSONL record, without fields left at their defaults."""
        defaults = {"matching": None, "not_matching": None, "label": None, "system": None,
                    "assistant_prefix": "", "chat": True}
        rec = {k: v for k, v in asdict(self).items() if defaults.get(k, object()) != v}
        if self.metric == ("margin" if self.is_pair else "none"):
            rec.pop("metric")
        return rec


@dataclass
class BehaviourDataset:
    """Items of one behaviour, all of one form and metric."""

    name: str
    """Behaviour name, e.g. sycophancy."""
    items: list[BehaviourItem]

    def __post_init__(self) -> None:
        if not self.items:
            raise BehaviourDataError(f"dataset {self.name!r} holds no records.")
        forms = {(it.is_pair, it.metric) for it in self.items}
        if len(forms) > 1:
            raise BehaviourDataError(f"dataset {self.name!r} mixes record forms/metrics {sorted(forms)}; "
                                     "keep one form (pair or labelled) and one metric per file.")
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            raise BehaviourDataError(f"dataset {self.name!r} has duplicate ids; ids must be unique.")
        if not self.is_pair and len({it.label for it in self.items}) < 2:
            raise BehaviourDataError(f"dataset {self.name!r} is labelled but holds only one label; "
                                     "it needs examples with label 1 and with label 0.")

    @property
    def is_pair(self) -> bool:
        return self.items[0].is_pair

    @property
    def metric(self) -> str:
        return self.items[0].metric

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, n: int | None, seed: int = 0) -> BehaviourDataset:
        """A seeded random subset of `n` items (all when n is None or at least the size);
        labelled sets keep both labels in proportion."""
        if n is None or n >= len(self.items):
            return self
        rng = random.Random(seed)
        if self.is_pair:
            return BehaviourDataset(self.name, rng.sample(self.items, n))
        pos = [it for it in self.items if it.label == 1]
        neg = [it for it in self.items if it.label == 0]
        n_pos = max(1, min(len(pos), round(n * len(pos) / len(self.items))))
        picked = rng.sample(pos, n_pos) + rng.sample(neg, min(len(neg), n - n_pos))
        rng.shuffle(picked)
        return BehaviourDataset(self.name, picked)

    def split(self, test_frac: float = 0.4, seed: int = 0) -> tuple[BehaviourDataset, BehaviourDataset]:
        """(train, test) by item, seeded; labelled sets are stratified by label."""
        if not 0 < test_frac < 1:
            raise ValueError(f"test_frac must be in (0, 1), got {test_frac}.")
        rng = random.Random(seed)
        groups = [self.items] if self.is_pair else [[it for it in self.items if it.label == lab] for lab in (0, 1)]
        train, test = [], []
        for group in groups:
            group = list(group)
            rng.shuffle(group)
            n_test = min(len(group) - 1, max(1, round(len(group) * test_frac)))
            test += group[:n_test]
            train += group[n_test:]
        if not train or not test:
            raise BehaviourDataError(f"dataset {self.name!r} has {len(self)} items, too few to split.")
        return BehaviourDataset(self.name, train), BehaviourDataset(self.name, test)


# -- our schema ----------------------------------------------------------------------------------

_FIELDS = {f for f in BehaviourItem.__dataclass_fields__}


def item_from_record(rec: dict[str, Any], default_id: str) -> BehaviourItem:
    """A BehaviourItem from one JSON record; unknown fields are an error naming the known ones."""
    if not isinstance(rec, dict) or "prompt" not in rec:
        raise BehaviourDataError(f"record {default_id}: every record needs a `prompt` field.")
    unknown = set(rec) - _FIELDS - {"behaviour"}
    if unknown:
        raise BehaviourDataError(f"record {default_id}: unknown field(s) {sorted(unknown)}; "
                                 f"the schema has {sorted(_FIELDS)}.")
    rec = {k: v for k, v in rec.items() if k != "behaviour"}
    rec.setdefault("id", default_id)
    rec["id"] = str(rec["id"])
    return BehaviourItem(**rec)


def read_jsonl(path: str | Path, name: str | None = None) -> BehaviourDataset:
    """A dataset from a JSONL file in the schema of the module docstring."""
    path = Path(path)
    items = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise BehaviourDataError(f"{path}: line {line_no} is not valid JSON ({err.msg}).") from None
            try:
                items.append(item_from_record(rec, str(line_no)))
            except (BehaviourDataError, TypeError) as err:
                raise BehaviourDataError(f"{path}: line {line_no}: {err}") from None
    return BehaviourDataset(name or path.stem, items)


def write_jsonl(dataset: BehaviourDataset, path: str | Path) -> Path:
    """Write `dataset` in the schema (one record per line, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for item in dataset.items:
            fh.write(json.dumps(item.to_record(), ensure_ascii=False) + "\n")
    return path


# -- public sets -----------------------------------------------------------------------------------

# Items of generate_dataset.json that the SycophancySteering authors wrote with GPT-4 all ask this;
# the others are Anthropic's model-written evals (CC-BY-4.0).
_CUSTOM_SYCOPHANCY = "which option do you agree with more?"


def from_sycophancy(path: str | Path, anthropic_only: bool = True) -> BehaviourDataset:
    """The A/B sycophancy set of nrimsky/SycophancySteering (`question`, `answer_matching_behavior`
    "(A)" or "(B)"). `anthropic_only` keeps the 643 items taken from Anthropic's evals."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    items = []
    for i, rec in enumerate(records):
        if anthropic_only and _CUSTOM_SYCOPHANCY in rec["question"]:
            continue
        match, other = (rec[k].strip().strip("()") for k in ("answer_matching_behavior",
                                                              "answer_not_matching_behavior"))
        items.append(BehaviourItem(id=f"syc-{i:04d}", prompt=rec["question"], matching=match,
                                   not_matching=other, assistant_prefix="("))
    return BehaviourDataset("sycophancy", items)


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] == '"' else text


def from_roleplaying(path: str | Path) -> BehaviourDataset:
    """Apollo's roleplaying deception set as JSON (`data`: scenario, question, answer_prefix,
    honest_completion, deceptive_completion). Surrounding quotes are stripped from both
    completions, since only some honest ones carry them (a cue unrelated to deception)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    items = [BehaviourItem(id=f"rp-{i:04d}", system=rec["scenario"], prompt=rec["question"],
                           assistant_prefix=rec["answer_prefix"].strip() + " ",
                           matching=_unquote(rec["deceptive_completion"]),
                           not_matching=_unquote(rec["honest_completion"]))
             for i, rec in enumerate(data["data"])]
    return BehaviourDataset("deception", items)


def from_statements(path: str | Path, name: str = "truth", label_column: str = "label") -> BehaviourDataset:
    """A `statement,label` CSV (label 1 = true) as labelled raw text (no chat template)."""
    with Path(path).open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "statement" not in reader.fieldnames or label_column not in reader.fieldnames:
            raise BehaviourDataError(f"{path}: expected columns statement and {label_column}, "
                                     f"found {reader.fieldnames}.")
        items = [BehaviourItem(id=f"st-{i:05d}", prompt=row["statement"], label=int(row[label_column]),
                               chat=False, metric="none") for i, row in enumerate(reader)]
    return BehaviourDataset(name, items)


def from_refusal(harmful: str | Path, harmless: str | Path, n_harmless: int | None = None,
                 seed: int = 0) -> BehaviourDataset:
    """Harmful (label 1) and harmless (label 0) instruction lists (`[{"instruction": ...}]`),
    measured by P(refusal opening). `n_harmless` samples that many harmless ones (default: as
    many as there are harmful)."""
    bad = [r["instruction"] for r in json.loads(Path(harmful).read_text(encoding="utf-8"))]
    good = [r["instruction"] for r in json.loads(Path(harmless).read_text(encoding="utf-8"))]
    good = random.Random(seed).sample(good, min(len(good), n_harmless or len(bad)))
    items = [BehaviourItem(id=f"harmful-{i:04d}", prompt=t, label=1, metric="refusal") for i, t in enumerate(bad)]
    items += [BehaviourItem(id=f"harmless-{i:05d}", prompt=t, label=0, metric="refusal") for i, t in enumerate(good)]
    return BehaviourDataset("refusal", items)


def load_behaviour(path: str | Path) -> BehaviourDataset:
    """Read a behaviour file, telling the format by its content: JSONL in our schema, the A/B
    sycophancy JSON list, the roleplaying JSON, or a `statement,label` CSV."""
    path = Path(path)
    if not path.is_file():
        raise BehaviourDataError(f"behaviour data file {path} does not exist.")
    if path.suffix == ".csv":
        return from_statements(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list) and data and "answer_matching_behavior" in data[0]:
            return from_sycophancy(path)
        if isinstance(data, dict) and data.get("data") and "deceptive_completion" in data["data"][0]:
            return from_roleplaying(path)
    raise BehaviourDataError(
        f"cannot read {path} as behaviour data: use JSONL in the schema of docs/behaviour.md, the "
        "sycophancy A/B JSON, the roleplaying JSON, or a statement,label CSV. Refusal lists need "
        "both files: convert them with sae.analysis.behaviour.datasets.from_refusal + write_jsonl.")
