"""Data for the command line: the embedded digits, and tables from CSV or NPZ files.

- :func:`load_digits` reads the 8x8 handwritten digits shipped in ``bpfast/data/digits.npz``
  (1,797 images, 10 classes; see ``bpfast/data/README.md`` for the source and licence).
- :func:`read_table` reads a user's ``.csv`` (with a header row) or ``.npz`` file into a
  :class:`Table` of named columns; :meth:`Table.numeric` and :meth:`Table.labels` turn some of
  them into arrays. Every problem with a file raises :class:`DataError` (a ``ValueError``)
  with a one-line message that names the file and, for CSV, the line and column.
"""
import csv
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DataError", "Table", "load_digits", "read_table", "DIGITS_PATH"]

#: The embedded digits file.
DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")


class DataError(ValueError):
    """A data file that cannot be read or does not hold what was asked for."""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits: ``(X, y)``.

    Returns
    -------
    X : ndarray of uint8, shape (1797, 64)
        Pixel counts 0..16, one image per row (row-major 8x8).
    y : ndarray of uint8, shape (1797,)
        The digit 0..9 of each image.
    """
    try:
        with np.load(DIGITS_PATH, allow_pickle=False) as data:
            X, y = data["X"], data["y"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(
            f"the embedded digits file {DIGITS_PATH} is missing or damaged ({err}); "
            "reinstall bpfast"
        ) from None
    if X.shape != (1797, 64) or y.shape != (1797,):
        raise DataError(f"the embedded digits file {DIGITS_PATH} has unexpected shapes")
    return X, y


@dataclass
class Table:
    """Named columns of equal length, read from a file.

    ``columns`` maps each name to an array with one entry (1-D) or one row (2-D, as an
    ``.npz`` file's ``X``) per sample. A numeric column is float64; a column with any
    non-numeric cell is kept as strings, with ``bad[name] = (line, cell)`` naming the
    first such cell for error messages.
    """

    path: str
    columns: dict
    rows: int
    bad: dict = field(default_factory=dict)
    kind: str = "csv"

    @property
    def names(self):
        return list(self.columns)

    def width(self, name):
        col = self.columns[name]
        return 1 if col.ndim == 1 else col.shape[1]

    def _require(self, names, what):
        missing = [n for n in names if n not in self.columns]
        if missing:
            s = "s" if len(missing) > 1 else ""
            hint = ""
            if self.kind == "csv" and all(_is_number(n) for n in self.columns):
                hint = "; its first row looks like data: the CSV needs a header row"
            raise DataError(
                f"{self.path}: {what} column{s} {name_list(missing)} not found "
                f"(the file has: {name_list(self.names)}{hint})"
            )

    def numeric(self, names, what="feature"):
        """The named columns side by side as a float64 ``(rows, width)`` array.

        Raises :class:`DataError` naming the first non-numeric or non-finite cell.
        """
        self._require(names, what)
        parts = []
        for name in names:
            col = self.columns[name]
            if name in self.bad:
                line, cell = self.bad[name]
                where = f" on line {line}" if line else ""
                raise DataError(
                    f"{self.path}: non-numeric value {cell!r} in {what} column {name!r}{where}"
                )
            if not np.isfinite(col).all():
                i = int(np.argwhere(~np.isfinite(col.reshape(self.rows, -1)))[0][0])
                where = f"line {i + 2}" if self.kind == "csv" else f"row {i}"
                raise DataError(
                    f"{self.path}: {what} column {name!r} holds a NaN or infinite value "
                    f"({where})"
                )
            parts.append(col.reshape(self.rows, -1))
        return np.ascontiguousarray(np.hstack(parts), dtype=np.float64)

    def labels(self, name):
        """One column as class labels: an array of ints (integer-valued numbers) or str.

        Raises :class:`DataError` when the column is 2-D or holds non-integer numbers.
        """
        self._require([name], "target")
        col = self.columns[name]
        if col.ndim != 1 and col.shape[1] != 1:
            raise DataError(
                f"{self.path}: target {name!r} has {col.shape[1]} columns; class labels need "
                "one column"
            )
        col = col.reshape(self.rows)
        if name in self.bad or col.dtype.kind in "US":
            return col.astype(str)
        if not np.isfinite(col).all() or not np.all(col == np.round(col)):
            raise DataError(
                f"{self.path}: target column {name!r} holds non-integer numbers; class labels "
                "must be integers or text (use --loss mse for a numeric target)"
            )
        return col.astype(np.int64)


def name_list(names: Iterable[object], limit: int = 6) -> str:
    """``'a', 'b', 'c'``, shortened to the first ``limit`` names and a count."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table(path: str | os.PathLike[str]) -> "Table":
    """Read ``path`` (``.npz``, else CSV with a header row) into a :class:`Table`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    if path.lower().endswith(".npz"):
        return _read_npz(path)
    return _read_csv(path)


def memory_size() -> int:
    """This machine's physical memory in bytes (or 64 GiB where it cannot be asked)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 64 << 30


def _check_inflated_size(path):
    """Refuse, before inflating anything, an archive whose members declare more bytes
    than this machine's memory (a zip bomb): zipfile inflates a member no further than
    its declared size."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    if declared > memory_size():
        raise DataError(
            f"{path}: the archive's arrays would take {declared:,} bytes, more than this "
            f"machine's memory ({memory_size():,} bytes)")


def _read_npz(path):
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if not magic:
        raise DataError(f"{path}: empty file")
    if magic != b"PK\x03\x04":
        raise DataError(f"{path}: not an .npz archive (no zip header)")
    _check_inflated_size(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive")
            arrays = {k: data[k] for k in data.files}
    except DataError:
        raise
    except TypeError:  # a plain .npy: np.load returns an array, no context manager
        raise DataError(f"{path}: not an .npz archive") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except Exception as err:  # zipfile, numpy's format checks, pickled object arrays
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable .npz archive ({msg})") from None
    if not arrays:
        raise DataError(f"{path}: the archive holds no arrays")
    rows = None
    columns, bad = {}, {}
    for name, a in arrays.items():
        if a.ndim not in (1, 2):
            raise DataError(
                f"{path}: array {name!r} has {a.ndim} dimensions; expected 1 (a column) or 2 "
                "(one row per sample)"
            )
        if rows is None:
            rows = a.shape[0]
        elif a.shape[0] != rows:
            raise DataError(
                f"{path}: array {name!r} has {a.shape[0]} rows, others have {rows}"
            )
        if a.dtype.kind in "biuf":
            columns[name] = a.astype(np.float64)
        elif a.dtype.kind in "US":
            columns[name] = a.astype(str)
            bad[name] = (None, str(a.reshape(-1)[0]) if a.size else "")
        else:
            raise DataError(f"{path}: array {name!r} has unsupported dtype {a.dtype}")
    if rows == 0:
        raise DataError(f"{path}: no samples (the arrays have 0 rows)")
    return Table(path, columns, rows, bad, kind="npz")


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header, lines, body = None, [], []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue  # blank line
                if header is None:
                    header = [cell.strip() for cell in record]
                    continue
                if len(record) != len(header):
                    raise DataError(
                        f"{path}: malformed CSV: line {reader.line_num} has {len(record)} "
                        f"fields, the header has {len(header)}"
                    )
                body.append(record)
                lines.append(reader.line_num)
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text (CSV) file") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if header is None:
        raise DataError(f"{path}: empty file (expected a header row and data rows)")
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: malformed CSV: header field {i + 1} is empty")
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: malformed CSV: column name {name!r} appears twice")
        seen.add(name)
    if not body:
        raise DataError(f"{path}: no data rows below the header")
    columns, bad = {}, {}
    for j, name in enumerate(header):
        cells = [record[j].strip() for record in body]
        for cell, line in zip(cells, lines):
            if not cell:
                raise DataError(f"{path}: empty cell in column {name!r} on line {line}")
        try:
            columns[name] = np.array(cells, dtype=np.float64)
        except ValueError:
            for cell, line in zip(cells, lines):
                try:
                    float(cell)
                except ValueError:
                    bad[name] = (line, cell)
                    break
            columns[name] = np.array(cells, dtype=str)
    return Table(path, columns, len(body), bad, kind="csv")


def write_csv(path: str | os.PathLike[str] | None, header: Sequence[str],
              columns: Sequence[np.ndarray], precision: int | None = None) -> None:
    """Write ``columns`` (1-D arrays, numbers or text) under ``header`` to ``path``.

    ``path`` ``"-"`` or None writes to standard output; otherwise the file is written to a
    temporary file beside the target and renamed, so it is never left half written.
    ``precision`` is the number of significant digits of floats (default: round-trip).
    """
    import sys

    fmt = (lambda v: repr(float(v))) if precision is None else (lambda v: f"{v:.{precision}g}")

    def rows():
        n = len(columns[0]) if columns else 0
        for i in range(n):
            yield [fmt(c[i]) if c.dtype.kind == "f" else str(c[i]) for c in columns]

    if path in (None, "-"):
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows())
        sys.stdout.flush()
        return
    from .io import atomic_write

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows())

    atomic_write(path, write, binary=False, suffix=".csv.tmp", newline="", encoding="utf-8")
