"""Adapter for the local HellaSwag copy, whose rows are {activity_label, ctx, query, choices, label}.

lm-eval's own ``process_docs`` (lm_eval/tasks/hellaswag/utils.py) reads the Hugging Face schema
{activity_label, ctx_a, ctx_b, endings, label}. The local dump has lost the ctx_a/ctx_b boundary but keeps
lm-eval's capitalised query, so each row is mapped back to that schema (ctx_a = the query's context,
ctx_b = "") and then handed to lm-eval's unchanged ``process_docs``. Introduced in notebook 04.
"""
from __future__ import annotations


def to_hf_schema(doc: dict) -> dict:
    """One local row -> the Hugging Face hellaswag schema."""
    prefix = doc["activity_label"] + ": "
    query = doc["query"]
    ctx_a = query[len(prefix):] if query.startswith(prefix) else doc["ctx"]
    return {"ctx_a": ctx_a, "ctx_b": "", "endings": list(doc["choices"])}


def process_docs(dataset):
    from lm_eval.tasks.hellaswag.utils import process_docs as lm_eval_process_docs

    if "endings" not in dataset.column_names:
        dataset = dataset.map(to_hf_schema)
    return lm_eval_process_docs(dataset)
