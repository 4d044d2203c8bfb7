"""The charts a newcomer looks at: the latency chart of `edgecls bench` (edgecls.bench_report.latency_figure)."""

import matplotlib.colors

from edgecls.runtime.formats import FP16, FP32, INT8


def _record(artifact: str, fmt: str, precision: str, p50: float) -> dict:
    return {
        "artifact": artifact,
        "format": fmt,
        "precision": precision,
        "threads": 1,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5,
    }


def _legend(fig) -> dict:
    """Legend label -> colour (hex) of its patch, for the bar entries."""
    legend = fig.axes[0].get_legend()
    return {
        text.get_text(): matplotlib.colors.to_hex(handle.get_facecolor())
        for text, handle in zip(legend.get_texts(), legend.legend_handles)
        if text.get_text().endswith(" p50")
    }


def test_the_latency_chart_has_a_legend_for_every_bar_colour_it_shows():
    from edgecls.bench_report import latency_figure

    records = [
        _record("tflite-fp32", "tflite", FP32, 0.05),
        _record("tflite-fp16", "tflite", FP16, 0.04),
        _record("tflite-int8", "tflite", INT8, 0.02),
        _record("keras", "keras", FP32, 30.0),
    ]
    fig = latency_figure({"records": records, "machine": {}})
    bars = [matplotlib.colors.to_hex(bar.get_facecolor()) for bar in fig.axes[0].patches]
    legend = _legend(fig)
    assert list(legend) == ["keras p50", f"{FP32} p50", f"{FP16} p50", f"{INT8} p50"]
    assert bars == [legend[f"{FP32} p50"], legend[f"{FP16} p50"], legend[f"{INT8} p50"], legend["keras p50"]]
    assert len(set(bars)) == 4  # four kinds, four colours
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[-2:] == ["p90", "p99"]  # the marks keep their entries


def test_the_latency_chart_legend_lists_only_the_kinds_it_shows():
    from edgecls.bench_report import latency_figure

    fig = latency_figure({"records": [_record("onnx-int8", "onnx", INT8, 0.1)], "machine": {}})
    assert list(_legend(fig)) == [f"{INT8} p50"]
