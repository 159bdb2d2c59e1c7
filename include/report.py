"""The run report: one self-contained HTML page with the model's figures as pictures (ROC and
precision-recall curves, confusion matrix, feature importance), the bias metrics and the lineage
graph. Plain Python over the run's own outputs: evaluation.json (model-quality format), Clarify's
analysis.json files and the lineage associations."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen here, and none needed
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

Edge = dict[str, str]  # Source/Destination Arn, Name and Type, AssociationType (ListAssociations)


def bias_metrics(analysis: dict[str, Any], section: str) -> dict[str, float]:
    """Metric name -> value of the first facet value in a Clarify analysis.json section."""
    facets = analysis.get(section, {}).get("facets", {})
    for results in facets.values():
        return {
            metric["name"]: metric["value"]
            for metric in results[0]["metrics"]
            if isinstance(metric.get("value"), (int, float))
        }
    return {}


def _picture(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _curves(evaluation: dict[str, Any]) -> str:
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    models = {"tuned": evaluation}
    if "baseline" in evaluation:
        models["baseline"] = evaluation["baseline"]
    for label, figures in models.items():
        metrics = figures["binary_classification_metrics"]
        curve = metrics["receiver_operating_characteristic_curve"]
        roc.plot(curve["false_positive_rates"], curve["true_positive_rates"],
                 label=f"{label} (AUC {metrics['auc']['value']:.3f})")
        curve = metrics["precision_recall_curve"]
        pr.plot(curve["recalls"], curve["precisions"], label=f"{label} (PR-AUC {metrics['pr_auc']['value']:.3f})")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(title="ROC curve (test set)", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall curve (test set)", xlabel="recall", ylabel="precision")
    roc.legend(loc="lower right")
    pr.legend(loc="upper right")
    return _picture(figure)


def _confusion(evaluation: dict[str, Any]) -> str:
    matrix = evaluation["binary_classification_metrics"]["confusion_matrix"]
    cells = [[matrix["0"]["0"], matrix["0"]["1"]], [matrix["1"]["0"], matrix["1"]["1"]]]
    figure, axes = plt.subplots(figsize=(4, 3.6))
    axes.imshow(cells, cmap="Blues")
    for row in range(2):
        for column in range(2):
            axes.text(column, row, str(cells[row][column]), ha="center", va="center", fontsize=14)
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["not fraud", "fraud"], yticklabels=["not fraud", "fraud"],
             xlabel="predicted", ylabel="actual",
             title=f"Confusion matrix at threshold {evaluation.get('probability_threshold', 0.5)}")
    return _picture(figure)


def _importance(evaluation: dict[str, Any], top: int = 15) -> str:
    gain = list(evaluation["feature_importance"]["gain"].items())[:top]
    figure, axes = plt.subplots(figsize=(7, 0.32 * len(gain) + 1))
    axes.barh([name for name, _ in reversed(gain)], [value for _, value in reversed(gain)], color="#4c72b0")
    axes.set(title=f"Feature importance (average gain, top {len(gain)})", xlabel="gain")
    return _picture(figure)


def _bias(pre: dict[str, float], post: dict[str, float]) -> str:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, metrics) in zip(axes, [("Pre-training bias", pre), ("Post-training bias", post)], strict=True):
        names = list(metrics)
        ax.bar(names, [metrics[name] for name in names], color="#dd8452")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=60)
    return _picture(figure)


def _lineage(edges: list[Edge]) -> str:
    graph = nx.DiGraph()
    for edge in edges:
        # Nodes are entities (ARNs); artifacts have no name, so they show their type alone.
        for end in ("Source", "Destination"):
            graph.add_node(edge[f"{end}Arn"], label=f"{edge[f'{end}Name']}\n({edge[f'{end}Type']})".strip())
        graph.add_edge(edge["SourceArn"], edge["DestinationArn"], label=edge["AssociationType"])
    # Left to right in the order data flows: each node's column is its longest path from a root.
    for node in nx.topological_sort(graph) if nx.is_directed_acyclic_graph(graph) else graph.nodes:
        parents = list(graph.predecessors(node))
        graph.nodes[node]["layer"] = 1 + max((graph.nodes[p].get("layer", 0) for p in parents), default=-1)
    positions = nx.multipartite_layout(graph, subset_key="layer") if graph else {}
    figure, axes = plt.subplots(figsize=(16, max(6, 0.5 * len(graph))))
    nx.draw_networkx(graph, positions, ax=axes, labels=nx.get_node_attributes(graph, "label"),
                     node_color="#c6dbef", node_size=900, font_size=6.5, arrows=True, arrowsize=10,
                     edge_color="#888888")
    nx.draw_networkx_edge_labels(graph, positions, nx.get_edge_attributes(graph, "label"), ax=axes, font_size=6)
    axes.set_title("SageMaker lineage of the run (associations)")
    axes.axis("off")
    return _picture(figure)


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_shown(value))}</td></tr>" for key, value in rows.items()
    )
    return f"<table>{cells}</table>"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def build_report(
    summary: dict[str, Any],
    evaluation: dict[str, Any],
    pre_training: dict[str, float],
    post_training: dict[str, float],
    lineage_edges: list[Edge],
) -> str:
    """The report page for one run."""
    tuned = evaluation["binary_classification_metrics"]
    quality = {
        name: tuned[name]["value"] for name in ("auc", "pr_auc", "precision", "recall", "f1", "accuracy") if name in tuned
    }
    if "baseline" in evaluation:
        quality["baseline auc"] = evaluation["baseline"]["binary_classification_metrics"]["auc"]["value"]
    run = {key: summary.get(key) for key in ("dag_id", "run_id", "state", "model_package_arn",
                                             "model_approval_status", "endpoint_name", "smoke_prediction")}
    seconds = summary.get("task_seconds", {})
    sections = [
        ("Run", _table(run)),
        ("Model quality on the held-out test set", _table(quality)
         + f'<img src="data:image/png;base64,{_curves(evaluation)}">'
         + f'<img src="data:image/png;base64,{_confusion(evaluation)}">'),
        ("Best hyperparameters", _table(summary.get("best_hyperparameters") or {})),
        ("Feature importance", f'<img src="data:image/png;base64,{_importance(evaluation)}">'),
        ("Bias (Clarify; label fraud, favourable value 0, facet customer_gender_female = 1)",
         _table({f"pre {k}": v for k, v in pre_training.items()} | {f"post {k}": v for k, v in post_training.items()})
         + f'<img src="data:image/png;base64,{_bias(pre_training, post_training)}">'),
        ("Lineage", f"<p>{len(lineage_edges)} associations.</p>"
         + (f'<img src="data:image/png;base64,{_lineage(lineage_edges)}">' if lineage_edges else "")),
        ("Task durations (seconds)", _table(dict(sorted(seconds.items(), key=lambda item: -item[1])))),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fraud_detection run report</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%;display:block;"
        "margin:1em 0}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "</style></head><body><h1>fraud_detection run report</h1>" + body + "</body></html>"
    )
