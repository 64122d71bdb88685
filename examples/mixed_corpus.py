"""Build a training corpus that mixes encyclopedic text with chat transcripts.

SAEs meant for behaviour analysis on a chat model should see chat-formatted text as well as
prose. This writes a JSONL file whose records are either {"text": ...} (a WikiText-2 paragraph)
or {"messages": [...]} (an hh-rlhf dialogue, which `sae cache` renders through the model's chat
template), interleaved.

    python examples/mixed_corpus.py --wiki sae/_bundled/wikitext-2-valid.txt \
        --chat path/to/hh-rlhf_harmless-base_test.jsonl.gz --out runs/corpus/mixed.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def dialogue_messages(transcript: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ... \\n\\nAssistant: ...' -> [{role, content}, ...] (user / assistant)."""
    parts = _TURN.split(transcript)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wiki", required=True, help="a .txt file, one paragraph per line")
    parser.add_argument("--chat", required=True, help="hh-rlhf style .jsonl(.gz) with a `chosen` field")
    parser.add_argument("--out", required=True)
    parser.add_argument("--chat-every", type=int, default=2, help="one dialogue after every N paragraphs")
    args = parser.parse_args()
    paragraphs = [line.strip() for line in Path(args.wiki).read_text(encoding="utf-8").splitlines() if line.strip()]
    opener = gzip.open if args.chat.endswith(".gz") else open
    with opener(args.chat, "rt", encoding="utf-8") as fh:
        dialogues = [dialogue_messages(json.loads(line)["chosen"]) for line in fh if line.strip()]
    dialogues = [d for d in dialogues if d]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_chat = 0
    with out.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(paragraphs):
            fh.write(json.dumps({"text": text}) + "\n")
            if (i + 1) % args.chat_every == 0 and n_chat < len(dialogues):
                fh.write(json.dumps({"messages": dialogues[n_chat]}) + "\n")
                n_chat += 1
    print(json.dumps({"out": str(out), "paragraphs": len(paragraphs), "dialogues": n_chat}))


if __name__ == "__main__":
    main()
