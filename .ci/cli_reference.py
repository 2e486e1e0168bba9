"""Write docs/cli.md, the command-line reference, from bpfast's own argparse parser.

    python .ci/cli_reference.py          # rewrite docs/cli.md
    python .ci/cli_reference.py --check  # exit 1 if docs/cli.md is stale

It imports the installed bpfast (or, with ``PYTHONPATH=.``, a source tree built in place).

Every subcommand and option comes from ``bpfast.cli.build_parser()``, so the page cannot
drift from the command; the prose around it lives in INTRO and OUTRO below.
"""
import argparse
import os
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

INTRO = """\
# Command line

Installing bpfast installs a `bpfast` command (also `python -m bpfast`). Every subcommand
has `--help`; `bpfast --version` prints the version.

| command | what it does |
|---|---|
| `bpfast demo` | trains a digit classifier on the embedded 8x8 digits, offline, and times the NumPy reference trainer on the same steps |
| `bpfast train --data FILE --target COLUMNS` | trains on your CSV or NPZ file and saves the model |
| `bpfast predict --model MODEL --data FILE` | predicts with a saved model, writes CSV |
| `bpfast check` | computes a gradient and checks it against the NumPy reference and finite differences |
| `bpfast bench` | the speed comparison of [Benchmarks](benchmarks.md) |

## Output

- **Progress.** On a terminal, `demo` and `train` show a progress bar on standard error.
  When standard error is not a terminal (a log file, a pipe), they write one plain line
  every few seconds instead, and one at the end:
  `training: epoch 600/1500, half_mse=0.0123, val_half_mse=0.0131, samples/s=812,345 (5.0 s)`.
- **`--quiet`** prints nothing but errors and the output you asked for: `train` writes its
  model (and plot), `predict` its predictions (to standard output when there is no `--out`).
- **Losses.** The squared-error loss that bpfast minimises is `E = 1/(2m) sum (A - Y)^2`,
  half the mean squared error; `train` calls it `half_mse` and prints the usual MSE, MAE
  and R² beside it. The classification loss is named `cross_entropy`.
- **Metrics of `predict`.** When the data holds the target column(s), `predict` reports the
  accuracy for a classifier, or R² (averaged over the targets, as scikit-learn's
  `r2_score`), MAE and MSE for regression. With `--out` the report goes to standard
  output, otherwise to standard error, so that standard output holds only the CSV.
- **Errors.** Bad input (a missing or unreadable file, a malformed CSV, a non-numeric cell,
  a missing target column, an empty file, a corrupted model or one that does not fit the
  data) prints one line on standard error that names the problem, e.g.
  `bpfast: error: data.csv: non-numeric value 'five' in feature column 'b' on line 3`, and
  exits with status 2; so do usage errors (with a pointer to `--help`), sizes whose arrays
  could not fit in the machine's memory (the message says how much they would need), and
  output paths that cannot be written, found before training starts. Model and prediction
  files are written to a temporary file and renamed, so a failure never leaves half a
  file.

## Data files

`train` and `predict` read a `.csv` with a header row (cells are numbers; a text target is
allowed for classification), or an `.npz` holding either arrays `X` (one sample per row) and
`Y` (then `--target` may be left out) or one 1-D array per named column. With
`--loss cross_entropy` and one target column of class labels (integers or text) the labels
are one-hot encoded. A bpfast model file holds only the network, so `train` writes a
sidecar `MODEL.json` next to it (`model.npz.json` for `model.npz`) with the class labels,
the input column names, the input scaling and the model file's checksum. The sidecar is
written before the model is renamed into place, so a failure or an interruption never
leaves a new model beside a missing or old sidecar (`predict` refuses a sidecar whose
checksum does not match the model). The standardisation divides each column by its
largest magnitude before squaring, so columns of values up to the float64 limit are
scaled, not zeroed; one that still overflows is refused by name. `predict` checks every
entry of the sidecar against the model (output names and class labels against its
outputs, the scaling's length and finiteness, the feature names and widths against its
inputs), selects the input columns by name (so the file may hold other columns, in any
order, and may lack the target) and writes a CSV: for a classifier the predicted label and
one probability column per class (`species,p_setosa,p_versicolor,p_virginica`), otherwise
one column per target. A model without a sidecar (saved from Python) takes every column
(or an `.npz`'s `X`) as its inputs, in order.

```bash
bpfast train --data iris.csv --target species --loss cross_entropy --hidden 16 --out iris.npz
bpfast predict --model iris.npz --data new_flowers.csv --out predictions.csv
```

`--plot` needs matplotlib, an optional extra: `pip install 'bpfast[plot]'`. Without it,
`--plot` says so in one line and exits with status 2.

## Reference

Generated from the command's own parser by `.ci/cli_reference.py`.
"""


def _option_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs != 0 and action.option_strings:
        metavar = action.metavar or (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices
            else action.dest.upper())
        names += f" `{metavar}`"
    text = (action.help or "").replace("%(default)s", str(action.default))
    text = " ".join(text.split())
    if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
        text = f"{text} (default {action.default})".strip()
    if action.choices and action.metavar:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    if action.required:
        text = "**required**; " + text
    return f"| {names} | {text.replace('|', '/')} |"


def _section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"### `bpfast {name}`", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    lines += ["```", usage, "```", "", "| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        lines.append(_option_row(action))
    return lines + [""]


def render() -> str:
    # argparse wraps usage to the terminal width: fix it so the page does not depend on it
    os.environ["COLUMNS"] = "100"
    from bpfast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [INTRO]
    for name, subparser in sub.choices.items():
        lines += _section(name, subparser)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run `python .ci/cli_reference.py`",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
