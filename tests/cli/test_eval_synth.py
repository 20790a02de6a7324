"""`llamavid eval-synth` table formatting (the scoring itself runs on the committed model in tests/train)."""

from __future__ import annotations

from llamavid.cli.eval_synth import format_tables


def _row(accuracy: float, count: int, combo: float | None, combo_count: int) -> dict:
    return {
        "accuracy": accuracy,
        "count": count,
        "blind": 0.2,
        "chance": 1 / 6,
        "heldout_combo_accuracy": combo,
        "heldout_combo_count": combo_count,
    }


def test_tables_show_held_out_combination_accuracy_per_type() -> None:
    results = {
        "model": "m",
        "sets": {
            "image_qa": {
                "mean": 0.75,
                "blind_mean": 0.2,
                "chance_mean": 1 / 6,
                "heldout_combo_accuracy": 0.3,
                "per_type": {
                    "image_shape": _row(0.6, 40, 0.3, 20),
                    "image_background": _row(0.9, 40, None, 0),
                },
            }
        },
    }
    lines = format_tables(results).splitlines()
    assert "| image_shape | 40 | 0.600 | 0.200 | 0.167 | 0.300 (20) |" in lines
    assert "| image_background | 40 | 0.900 | 0.200 | 0.167 | - |" in lines
    assert "held-out (shape, colour) combos: 0.300" in lines
