"""``pixie-rerank eval`` (placeholder until the evaluation lands)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="evaluate rerankers with the model card's NDCG method")
    parser.set_defaults(func=lambda args: parser.error("not implemented yet"))
