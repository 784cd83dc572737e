"""Output-path rules shared by every writer of the project (the inference CLI, make_haze_pairs, make_demo_data,
create_lmdb, convert_official_checkpoint, benchmark_quality).

Two rules:

- **An output never equals, contains or sits inside an input** (:func:`check_outputs_apart`). Paths are compared
  after resolving symbolic links (``os.path.realpath``), and existing files are also compared with
  ``os.path.samefile``, so a symlink or a hard link to an input counts as that input.
- **A tool replaces or deletes only files it recorded as its own** (:class:`OutputManifest`). Every file a tool
  writes into an output root is recorded in ``ROOT/.mixcl_outputs.jsonl`` with its size and modification time;
  ``--overwrite`` and clean-ups touch a file only while it still matches its record, so a user's file (or one the
  user edited since) is never replaced or deleted.

The manifest is append-only, one JSON object per line, each appended with a single ``write`` on an ``O_APPEND``
descriptor: concurrent runs into one folder do not lose each other's records, recording costs O(1) per file, and a
line torn by a kill is skipped when read (the file it described then simply counts as foreign). Rewrites of the
whole manifest (after a clean-up) are atomic.
"""
import json
import os

from mixcl_arch.utils.file_io import atomic_write_text

MANIFEST_NAME = '.mixcl_outputs.jsonl'


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def path_relation(path, other):
    """How ``path`` relates to ``other`` on disk.

    Returns:
        str | None: 'same' (one file or folder, also through symlinks and hard links), 'inside' (``path`` lies in
        the folder ``other``), 'contains' (``other`` lies in the folder ``path``) or None (apart).
    """
    a, b = _real(path), _real(other)
    if a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)):
        return 'same'
    if a.startswith(b.rstrip(os.sep) + os.sep):
        return 'inside'
    if b.startswith(a.rstrip(os.sep) + os.sep):
        return 'contains'
    return None


_RELATION_WORDS = {'same': 'is the same path as', 'inside': 'lies inside', 'contains': 'contains'}


def check_outputs_apart(outputs, inputs, what='output'):
    """Refuse outputs that equal, contain or sit inside an input; call it before writing anything.

    Args:
        outputs (Iterable[str]): Files or folders the tool will write (or delete in).
        inputs (Iterable[str | None]): Files or folders it reads; None entries are ignored.
        what (str): How the outputs are called in the message, e.g. '--output'.

    Raises:
        ValueError: Naming the output, the input and how they overlap.
    """
    inputs = [p for p in inputs if p]
    for out in outputs:
        for inp in inputs:
            rel = path_relation(out, inp)
            if rel:
                raise ValueError(f'{what} {out} {_RELATION_WORDS[rel]} the input {inp}; writing there could destroy '
                                 'the input. Choose an output path apart from the inputs (nothing was written).')


class OutputManifest:
    """The files a tool wrote under ``root`` (see the module docstring).

    Args:
        root (str): Output root; the manifest is ``root/.mixcl_outputs.jsonl`` and records paths relative to it.
        tool (str): Name of the writing tool; :meth:`owns` and :meth:`remove_recorded` only consider its records
            (or those of ``tools`` given there).
    """

    def __init__(self, root, tool):
        self.root = _real(root)
        self.tool = tool
        self.path = os.path.join(self.root, MANIFEST_NAME)
        self._records = self._read()

    def _read(self):
        records = {}
        if not os.path.isfile(self.path):
            return records
        with open(self.path, encoding='utf-8', errors='replace') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records[rec['path']] = rec
                except (ValueError, KeyError, TypeError):  # a torn last line from a killed run
                    continue
        return records

    def _rel(self, path):
        return os.path.relpath(_real(path), self.root).replace(os.sep, '/')

    def _matches(self, rec, tools):
        if rec.get('tool') not in tools:
            return False
        try:
            st = os.stat(os.path.join(self.root, rec['path']))
        except OSError:
            return False
        return st.st_size == rec.get('size') and st.st_mtime_ns == rec.get('mtime_ns')

    def owns(self, path):
        """True when ``path`` is a file this tool wrote and nobody changed since."""
        rec = self._records.get(self._rel(path))
        return rec is not None and self._matches(rec, (self.tool,))

    def record(self, path):
        """Record the file just written at ``path`` (which must lie under the root) as this tool's own."""
        rel = self._rel(path)
        if rel.startswith('../'):
            raise ValueError(f'{path} is outside the output root {self.root}; it cannot be recorded there.')
        st = os.stat(path)
        rec = {'path': rel, 'tool': self.tool, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (json.dumps(rec) + '\n').encode('utf-8'))
        finally:
            os.close(fd)
        self._records[rel] = rec

    def remove_recorded(self, protect=(), tools=None):
        """Delete the recorded files that still match their records, then the folders they leave empty.

        Args:
            protect (Iterable[str]): Input files or folders; a recorded file equal to or inside one is kept.
            tools (Iterable[str] | None): Whose records to delete (default: this tool's).

        Returns:
            list[str]: The deleted files.
        """
        tools = tuple(tools or (self.tool,))
        protect = [p for p in protect if p]
        removed, folders = [], set()
        for rel, rec in list(self._records.items()):
            full = os.path.join(self.root, rel)
            if not self._matches(rec, tools) or any(path_relation(full, p) in ('same', 'inside') for p in protect):
                continue
            os.remove(full)
            removed.append(full)
            del self._records[rel]
            folders.add(os.path.dirname(full))
        for folder in sorted(folders, key=len, reverse=True):
            while folder.startswith(self.root + os.sep) and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
                folder = os.path.dirname(folder)
        kept = ''.join(json.dumps(r) + '\n' for r in self._records.values())
        if kept or os.path.exists(self.path):
            atomic_write_text(kept, self.path)
        return removed

    def foreign_files(self, folder):
        """Non-hidden files under ``folder`` that are not recorded (by any tool) and unchanged: not ours."""
        foreign = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rec = self._records.get(self._rel(full))
                if not name.startswith('.') and (rec is None or not self._matches(rec, (rec.get('tool'),))):
                    foreign.append(full)
        return foreign
